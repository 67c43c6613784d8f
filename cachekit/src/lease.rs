//! Leases on missing keys: the marker, its timing, and the guard that gives it back.
//!
//! A lease is a marker written into the empty key (see [`Backend`](crate::Backend)). Its TTL in
//! the store is short, about one and a half operation timeouts, and its holder renews it while
//! the loader runs; so a slow loader keeps its lease, and a holder that stops without giving it
//! back (its runtime shut down) wedges the key for that short TTL only. Every other way a
//! holder can stop (its loader failed, panicked or was cancelled, its lease or fill request
//! failed or timed out) gives the marker back at once through [`LeaseGuard`].

use crate::CacheService;
use crate::backend::LEASE_MARKER_PREFIX;
use crate::guard::{Bound, Budget};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a marker lives in the store, and how often its holder renews it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// The marker's TTL in the store.
    pub(crate) ttl: Duration,
    /// The renewal period.
    pub(crate) every: Duration,
}

impl Beat {
    /// The marker lives 1.5 operation timeouts and is renewed a quarter timeout after the last
    /// renewal answered. While renewals answer quickly the marker never lapses; a renewal that
    /// is slow or fails can let it lapse (then the fill is refused: a cost in hit rate, never in
    /// correctness). A dead holder's marker lapses within 1.5 timeouts.
    pub(crate) fn for_timeout(timeout: Duration) -> Self {
        let ttl = (timeout * 3 / 2).max(Duration::from_millis(3));
        Self {
            ttl,
            every: (timeout / 4).max(Duration::from_millis(1)),
        }
    }
}

/// A lease marker unique to this call: the marker prefix, a per-process random number, the
/// process id and a counter.
pub(crate) fn new_marker() -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    static PROCESS: LazyLock<u64> =
        LazyLock::new(|| RandomState::new().hash_one(std::process::id()));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut marker = LEASE_MARKER_PREFIX.to_vec();
    marker
        .extend_from_slice(format!("{:016x}-{}-{count}", *PROCESS, std::process::id()).as_bytes());
    marker
}

/// A lease this call asked for or holds. Armed from before the lease request is sent: dropped
/// without [`disarm`](Self::disarm) (the request failed or timed out and may still run on the
/// server; the loader failed, panicked or was cancelled; the fill failed), it gives the marker
/// back in the background with a compare-and-delete, which removes it only if it is still
/// there. On the same connection that request queues behind the lease request, so it also
/// removes a marker whose request the server runs late. If the runtime is gone, the marker
/// lapses by its short TTL.
pub(crate) struct LeaseGuard {
    service: Option<CacheService>,
    pub(crate) physical: String,
    pub(crate) marker: Vec<u8>,
}

impl LeaseGuard {
    pub(crate) fn new(service: &CacheService, physical: &str) -> Self {
        Self {
            service: Some(service.clone()),
            physical: physical.to_owned(),
            marker: new_marker(),
        }
    }

    /// The marker is settled (filled, given back, or never written): nothing to do on drop.
    pub(crate) fn disarm(&mut self) {
        self.service = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(service) = self.service.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the marker lapses by its TTL
        };
        let physical = std::mem::take(&mut self.physical);
        let marker = std::mem::take(&mut self.marker);
        // Off the caller's path, so bounded by the admin timeout rather than the op timeout: a
        // release queued behind a stalled request must outlive the stall to run after it (and,
        // if the server has not cached the script yet, to resend it after `NOSCRIPT`).
        runtime.spawn(async move {
            let guard = service.guard();
            let release = guard.backend().release(&physical, &marker);
            let _ = guard
                .call("release", Bound::Admin, &Budget::default(), release)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_lands_before_the_marker_lapses() {
        for ms in [1, 10, 250, 2_000, 30_000] {
            let timeout = Duration::from_millis(ms);
            let beat = Beat::for_timeout(timeout);
            // The next renewal is sent `every` later and lands within `timeout`.
            assert!(
                beat.every + timeout < beat.ttl,
                "timeout {timeout:?}: {beat:?}"
            );
        }
    }

    #[test]
    fn markers_are_unique_and_marked() {
        let (a, b) = (new_marker(), new_marker());
        assert_ne!(a, b);
        assert!(crate::backend::is_lease_marker(&a));
    }
}
