//! Counters of what the service did, and the snapshot users read.

use crate::backend::BackendKind;
use crate::breaker::BreakerState;
use crate::error::FaultKind;
use crate::metrics::{Metrics, Tier};
use crossbeam_utils::CachePadded;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A snapshot of a [`CacheService`](crate::CacheService)'s counters, from
/// [`CacheService::stats`](crate::CacheService::stats). Counters start at zero when the service
/// is built and are shared by all its clones. `Serialize`, so a `/cache/stats` endpoint can
/// return it as is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that found a value that decoded in the store (Redis, or the embedded store).
    pub hits: u64,
    /// Reads served by the in-process tier, without reaching the store (see
    /// [`CacheServiceBuilder::local_tier`](crate::CacheServiceBuilder::local_tier)); not
    /// counted in `hits`.
    pub local_hits: u64,
    /// Times the in-process tier was flushed and bypassed because its invalidation channel
    /// failed (dropped, closed, or a heartbeat unanswered); it serves again once the channel
    /// is back.
    pub local_flushes: u64,
    /// Reads that shared a concurrent read of the same key from the store (and its decoded
    /// value) instead of sending their own; counted in `hits` or `misses` as well.
    pub reads_coalesced: u64,
    /// Reads of Redis that queued behind reads in flight and left with others as one pipeline
    /// (many tasks reading distinct keys); counted in `hits` or `misses` as well.
    pub reads_batched: u64,
    /// Reads that found nothing (or a value that did not decode, or could not reach the store).
    pub misses: u64,
    /// Values written.
    pub sets: u64,
    /// Keys removed by `delete` (whether or not they existed).
    pub deletes: u64,
    /// Calls to `invalidate_pattern` and `clear_all`.
    pub invalidations: u64,
    /// Backend faults of every kind: timeouts, refused or dropped connections, error replies.
    /// [`faults`](Self::faults) splits them by kind.
    pub errors: u64,
    /// The backend faults by kind.
    pub faults: FaultStats,
    /// Invalidations that could not reach the backend (unreachable, timed out, breaker open),
    /// remembered to be applied when it answers again, before it serves another read.
    pub invalidations_deferred: u64,
    /// Remembered invalidations applied after the backend came back.
    pub invalidations_replayed: u64,
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
    /// Values reloaded before they expired, by refresh-ahead
    /// ([`CacheServiceBuilder::refresh_ahead`](crate::CacheServiceBuilder::refresh_ahead)), or
    /// past their TTL within their grace period, and written back.
    pub refreshes: u64,
    /// Values served past their TTL because the loader failed (stale-if-error,
    /// [`CacheServiceBuilder::stale_if_error`](crate::CacheServiceBuilder::stale_if_error));
    /// each one also flagged in [`Fetched::stale`](crate::Fetched::stale).
    pub stale_served: u64,
    /// The primary backend.
    pub backend: BackendKind,
    /// The circuit breaker's state when the snapshot was taken.
    pub breaker: BreakerState,
}

impl CacheStats {
    /// Reads that found a value, in the store or the in-process tier, over all reads:
    /// `(hits + local_hits) / (hits + local_hits + misses)`, or `0.0` before any read.
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
        let found = self.hits + self.local_hits;
        let reads = found + self.misses;
        if reads == 0 {
            0.0
        } else {
            found as f64 / reads as f64
        }
    }
}

/// Backend faults by kind, in [`CacheStats::faults`]. Only `timeouts` and `connection` count
/// toward the circuit breaker; the others are replies that failed one operation each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FaultStats {
    /// No answer within the operation timeout.
    pub timeouts: u64,
    /// Refused, reset or closed connections and other I/O errors.
    pub connection: u64,
    /// `OOM` replies (the server is full and refuses writes).
    pub out_of_memory: u64,
    /// `NOPERM`/`NOAUTH` replies.
    pub no_permission: u64,
    /// `WRONGTYPE` replies (a key of another type under the prefix).
    pub wrong_type: u64,
    /// `READONLY` replies (a replica).
    pub read_only: u64,
    /// `BUSY` and `LOADING` replies.
    pub busy: u64,
    /// Values over the maximum value size: found in the store (not read, removed) or about to
    /// be written (not written).
    pub too_large: u64,
    /// Other error replies.
    pub other_reply: u64,
}

/// The live counters behind [`CacheStats`]. Relaxed atomics: each counter is exact, a snapshot
/// is not a transaction across counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) local_hits: Striped,
    pub(crate) local_flushes: AtomicU64,
    pub(crate) reads_coalesced: Striped,
    pub(crate) misses: Striped,
    pub(crate) sets: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stale_sets_prevented: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) invalidations_deferred: AtomicU64,
    pub(crate) invalidations_replayed: AtomicU64,
    faults: [AtomicU64; FAULT_KINDS.len()],
    /// The facade's metrics, when they are on.
    pub(crate) metrics: Option<Metrics>,
}

/// Cells of a [`Striped`] counter.
const CELLS: usize = 8;

/// A counter every thread bumps on the hit path, spread over cells on cache lines of their
/// own, one per thread (modulo [`CELLS`]): threads on different cores do not pull one line back
/// and forth with every read. Read as the sum of its cells.
#[derive(Debug, Default)]
pub(crate) struct Striped([CachePadded<AtomicU64>; CELLS]);

impl Striped {
    pub(crate) fn bump(&self) {
        thread_local! {
            static CELL: usize = NEXT_CELL.fetch_add(1, Relaxed) % CELLS;
        }
        static NEXT_CELL: AtomicUsize = AtomicUsize::new(0);
        let cell = CELL.with(|cell| *cell);
        self.0[cell].fetch_add(1, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().map(|cell| cell.load(Relaxed)).sum()
    }
}

/// Every fault kind, in the order of [`Counters::faults`].
const FAULT_KINDS: [FaultKind; 9] = [
    FaultKind::Timeout,
    FaultKind::Connection,
    FaultKind::OutOfMemory,
    FaultKind::NoPermission,
    FaultKind::WrongType,
    FaultKind::ReadOnly,
    FaultKind::Busy,
    FaultKind::TooLarge,
    FaultKind::OtherReply,
];

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counters that also report to the `metrics` facade if `metrics` is on.
    pub(crate) fn new(metrics: bool) -> Self {
        Self {
            metrics: metrics.then(Metrics::new),
            ..Self::default()
        }
    }

    /// Counts one backend fault of `kind` (and one error).
    pub(crate) fn fault(&self, kind: FaultKind) {
        Self::bump(&self.errors);
        if let Some(i) = FAULT_KINDS.iter().position(|k| *k == kind) {
            Self::bump(&self.faults[i]);
        }
        if let Some(metrics) = &self.metrics {
            metrics.fault(kind);
        }
    }

    /// A read of the logical `key` that found a value in `tier` (also recorded in the current
    /// `cachekit.get` or `cachekit.get_or_load` span).
    pub(crate) fn hit(&self, key: &str, tier: Tier) {
        let label = match tier {
            Tier::Store => {
                self.hits.bump();
                "store"
            }
            Tier::Local => {
                self.local_hits.bump();
                "local"
            }
        };
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("tier", label);
        }
        if let Some(metrics) = &self.metrics {
            metrics.of(key).hit(tier);
        }
    }

    /// A read of `key` that found nothing usable.
    pub(crate) fn miss(&self, key: &str) {
        self.misses.bump();
        if let Some(metrics) = &self.metrics {
            metrics.of(key).misses.increment(1);
        }
    }

    /// A read of `key` that shared another's request to the store.
    pub(crate) fn read_coalesced(&self, key: &str) {
        self.reads_coalesced.bump();
        if let Some(metrics) = &self.metrics {
            metrics.of(key).coalesced.increment(1);
        }
    }

    /// A miss of `key` served by another caller's load in this process.
    pub(crate) fn load_coalesced(&self, key: &str) {
        Self::bump(&self.coalesced);
        if let Some(metrics) = &self.metrics {
            metrics.of(key).coalesced.increment(1);
        }
    }

    /// A loaded or refreshed value of `key` not written: the key changed while it loaded.
    pub(crate) fn stale_set_prevented(&self, key: &str) {
        Self::bump(&self.stale_sets_prevented);
        if let Some(metrics) = &self.metrics {
            metrics.of(key).stale_sets_prevented.increment(1);
        }
    }

    /// A refreshed value of `key` written back.
    pub(crate) fn refreshed(&self, key: &str) {
        Self::bump(&self.sets);
        Self::bump(&self.refreshes);
        if let Some(metrics) = &self.metrics {
            metrics.of(key).refreshes.increment(1);
        }
    }

    /// A value of `key` served past its TTL.
    pub(crate) fn served_stale(&self, key: &str) {
        Self::bump(&self.stale_served);
        if let Some(metrics) = &self.metrics {
            metrics.of(key).stale_served.increment(1);
        }
    }

    /// `removed` entries removed by an invalidation of `key_or_pattern`.
    pub(crate) fn invalidated(&self, key_or_pattern: &str, removed: u64) {
        if let Some(metrics) = &self.metrics {
            metrics.of(key_or_pattern).invalidated.increment(removed);
        }
    }

    /// A loader run for `key` that took `took` and succeeded or not.
    pub(crate) fn loaded(&self, key: &str, took: std::time::Duration, ok: bool) {
        if let Some(metrics) = &self.metrics {
            let ns = metrics.of(key);
            ns.loads.increment(1);
            if !ok {
                ns.load_errors.increment(1);
            }
            ns.load_duration.record(took.as_secs_f64());
        }
    }

    pub(crate) fn snapshot(&self, backend: BackendKind, breaker: BreakerState) -> CacheStats {
        CacheStats {
            hits: self.hits.sum(),
            local_hits: self.local_hits.sum(),
            local_flushes: self.local_flushes.load(Relaxed),
            reads_coalesced: self.reads_coalesced.sum(),
            reads_batched: 0,
            misses: self.misses.sum(),
            sets: self.sets.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            errors: self.errors.load(Relaxed),
            faults: {
                let f = |i: usize| self.faults[i].load(Relaxed);
                FaultStats {
                    timeouts: f(0),
                    connection: f(1),
                    out_of_memory: f(2),
                    no_permission: f(3),
                    wrong_type: f(4),
                    read_only: f(5),
                    busy: f(6),
                    too_large: f(7),
                    other_reply: f(8),
                }
            },
            invalidations_deferred: self.invalidations_deferred.load(Relaxed),
            invalidations_replayed: self.invalidations_replayed.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            stale_sets_prevented: self.stale_sets_prevented.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            stale_served: self.stale_served.load(Relaxed),
            backend,
            breaker,
        }
    }
}
