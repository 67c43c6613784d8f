//! Counters of what the service did, and the snapshot users read.

use crate::backend::BackendKind;
use crate::breaker::BreakerState;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a [`CacheService`](crate::CacheService)'s counters, from
/// [`CacheService::stats`](crate::CacheService::stats). Counters start at zero when the service
/// is built and are shared by all its clones. `Serialize`, so a `/cache/stats` endpoint can
/// return it as is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that found a value that decoded.
    pub hits: u64,
    /// Reads that found nothing (or a value that did not decode, or could not reach the store).
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Keys removed by `delete` (whether or not they existed).
    pub deletes: u64,
    /// Calls to `invalidate_pattern` and `clear_all`.
    pub invalidations: u64,
    /// Backend failures: timeouts, refused or dropped connections, server errors.
    pub errors: u64,
    /// Operations that could not use the primary backend and went to the fallback (the loader,
    /// or the in-process fallback store), including those skipped while the breaker was open.
    pub fallbacks: u64,
    /// Stored values that did not decode into the requested type (each deleted).
    pub decode_errors: u64,
    /// Misses served by another caller's loader in this process (single-flight), without
    /// running their own.
    pub coalesced: u64,
    /// Loaded values not written because the key was invalidated while they loaded: each one a
    /// stale value that would otherwise have been cached.
    pub stale_sets_prevented: u64,
    /// The primary backend.
    pub backend: BackendKind,
    /// The circuit breaker's state when the snapshot was taken.
    pub breaker: BreakerState,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or `0.0` before any read.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("a", &1, None).await;
    /// let _: Option<i32> = cache.get("a").await;
    /// let _: Option<i32> = cache.get("b").await;
    /// assert_eq!(cache.stats().hit_rate(), 0.5);
    /// # });
    /// ```
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// The live counters behind [`CacheStats`]. Relaxed atomics: each counter is exact, a snapshot
/// is not a transaction across counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stale_sets_prevented: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, backend: BackendKind, breaker: BreakerState) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            sets: self.sets.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            errors: self.errors.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            stale_sets_prevented: self.stale_sets_prevented.load(Relaxed),
            backend,
            breaker,
        }
    }
}
