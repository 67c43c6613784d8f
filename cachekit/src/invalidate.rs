//! Removal: the one place `delete`, `invalidate_pattern` and `clear_all` go through, and the
//! invalidations that could not be applied, remembered until the backend answers again.
//!
//! An invalidation that meets a transport fault (the server unreachable or timing out) or the
//! open breaker is remembered, up to [`MAX_DEFERRED`] keys and patterns; past that, the whole
//! prefix is marked for clearing. While anything is remembered, the service serves no read from
//! the backend: the first read replays what is remembered (through the breaker, as its probe
//! when it is half-open), and only a complete replay lets reads through again. So once the
//! backend answers, no read can return a value an earlier, failed invalidation was meant to
//! remove.

use crate::backend::Backend;
use crate::guard::{Bound, Budget, Guard};
use crate::stats::Counters;
use crate::{CacheError, CacheService};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many keys and patterns are remembered before the whole prefix is marked for clearing.
pub const MAX_DEFERRED: usize = 10_000;

/// The invalidations waiting for the backend.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    /// Set whenever something is remembered; cleared by a complete replay. Reads check it.
    pending: AtomicBool,
    set: Mutex<DeferredSet>,
    /// Held by the one task replaying.
    replaying: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct DeferredSet {
    keys: HashSet<String>,
    patterns: HashSet<String>,
    /// More were lost than the bound holds: clear the prefix.
    overflowed: bool,
}

impl DeferredSet {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.patterns.is_empty() && !self.overflowed
    }

    fn len(&self) -> usize {
        self.keys.len() + self.patterns.len()
    }

    fn merge(&mut self, other: DeferredSet) {
        if other.overflowed || self.overflowed {
            *self = DeferredSet {
                overflowed: true,
                ..DeferredSet::default()
            };
            return;
        }
        self.keys.extend(other.keys);
        self.patterns.extend(other.patterns);
        self.bound();
    }

    fn bound(&mut self) {
        if self.len() > MAX_DEFERRED {
            *self = DeferredSet {
                overflowed: true,
                ..DeferredSet::default()
            };
        }
    }
}

/// One physical key or pattern to remove.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Removal<'a> {
    Key(&'a str),
    Pattern(&'a str),
}

impl Deferred {
    /// Whether invalidations wait to be applied (one atomic load).
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Remembers an invalidation that could not be applied.
    pub(crate) fn remember(&self, removal: Removal<'_>, counters: &Counters) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if !set.overflowed {
            match removal {
                Removal::Key(key) => set.keys.insert(key.to_owned()),
                Removal::Pattern(pattern) => set.patterns.insert(pattern.to_owned()),
            };
            set.bound();
            if set.overflowed {
                tracing::warn!(
                    max = MAX_DEFERRED,
                    "cachekit: too many invalidations could not reach the backend; its whole \
                     prefix will be cleared when it answers again"
                );
            }
        }
        Counters::bump(&counters.invalidations_deferred);
        self.pending.store(true, Ordering::Release);
    }

    /// Applies what is remembered. `Ok` when nothing remains; `Err` when the backend still
    /// cannot be used, or another task is replaying (the caller must then not read the backend).
    pub(crate) async fn replay(
        &self,
        guard: &Guard,
        prefix_pattern: &str,
        counters: &Counters,
        budget: &Budget,
    ) -> Result<(), CacheError> {
        let Ok(_replaying) = self.replaying.try_lock() else {
            return Err(CacheError::Skipped);
        };
        let batch = std::mem::take(&mut *self.set.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return self.settle();
        }
        let apply = async {
            let backend = guard.backend();
            if batch.overflowed {
                backend.delete_matching(prefix_pattern).await?;
                return Ok(());
            }
            let keys: Vec<String> = batch.keys.iter().cloned().collect();
            backend.delete_many(&keys).await?;
            for pattern in &batch.patterns {
                backend.delete_matching(pattern).await?;
            }
            Ok(())
        };
        match guard.call("replay", Bound::Admin, budget, apply).await {
            Ok(()) => {
                let applied = if batch.overflowed { 1 } else { batch.len() };
                counters
                    .invalidations_replayed
                    .fetch_add(applied as u64, Ordering::Relaxed);
                tracing::info!(
                    applied,
                    cleared_prefix = batch.overflowed,
                    "cachekit: applied the invalidations that could not reach the backend"
                );
                self.settle()
            }
            Err(error) => {
                self.set
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .merge(batch);
                Err(error)
            }
        }
    }

    /// Lets reads through again if nothing was remembered meanwhile.
    fn settle(&self) -> Result<(), CacheError> {
        let set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if set.is_empty() {
            self.pending.store(false, Ordering::Release);
            Ok(())
        } else {
            Err(CacheError::Skipped)
        }
    }
}

impl CacheService {
    /// Lets a read reach the backend only once no invalidation waits to be applied: replays them
    /// first, or refuses.
    pub(crate) async fn read_gate(&self, budget: &Budget) -> Result<(), CacheError> {
        let inner = &*self.inner;
        if !inner.deferred.is_pending() {
            return Ok(());
        }
        let everything = self.physical_pattern("*");
        inner
            .deferred
            .replay(&inner.guard, &everything, &inner.counters, budget)
            .await
    }

    /// The one removal path: the fallback store, then the backend; a removal the backend could
    /// not receive is remembered.
    pub(crate) async fn remove(&self, removal: Removal<'_>) -> Result<u64, CacheError> {
        let inner = &*self.inner;
        let budget = Budget::default();
        let guard = self.guard();
        let backend = guard.backend();
        let result = match removal {
            Removal::Key(key) => {
                if let Some((store, _)) = &inner.fallback {
                    let _ = store.delete(key).await;
                }
                guard
                    .call("delete", Bound::Op, &budget, backend.delete(key))
                    .await
                    .map(u64::from)
            }
            Removal::Pattern(pattern) => {
                if let Some((store, _)) = &inner.fallback {
                    let _ = store.delete_matching(pattern).await;
                }
                let walk = backend.delete_matching(pattern);
                guard
                    .call("invalidate_pattern", Bound::Admin, &budget, walk)
                    .await
            }
        };
        if let Err(e) = &result
            && (e.is_transport() || e.is_skipped())
        {
            inner.deferred.remember(removal, &inner.counters);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_the_prefix_is_marked_for_clearing() {
        let deferred = Deferred::default();
        let counters = Counters::default();
        for i in 0..=MAX_DEFERRED {
            deferred.remember(Removal::Key(&format!("p:{i}")), &counters);
        }
        let set = deferred.set.lock().unwrap();
        assert!(set.overflowed && set.keys.is_empty());
        assert!(deferred.is_pending());
    }
}
