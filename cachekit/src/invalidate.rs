//! Removal: the one place `delete`, `invalidate_pattern` and `clear_all` go through, and the
//! invalidations that could not be applied, remembered until the backend answers again.
//!
//! An invalidation that meets a transport fault (the server unreachable or timing out), the
//! open breaker, or a passing reply (a replica, a busy or loading server) is remembered, up to
//! [`MAX_DEFERRED`] keys and patterns (and 16 patterns); past that, the whole prefix is marked
//! for clearing. While anything is remembered, the service serves no read from the backend: the
//! first read starts a replay in the background (through the breaker, as its probe when it is
//! half-open) and goes to the loader, and only a replay that applied everything lets reads
//! through again. So once the backend answers, no read can return a value an earlier, failed
//! invalidation was meant to remove.

use crate::backend::Backend;
use crate::error::FaultKind;
use crate::guard::{Bound, Budget};
use crate::stats::Counters;
use crate::{CacheError, CacheService};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How many keys and patterns are remembered before the whole prefix is marked for clearing.
pub const MAX_DEFERRED: usize = 10_000;

/// Remembered patterns beyond this many are replaced by clearing the whole prefix: each pattern
/// is a walk of the keyspace, and reads wait for the replay to finish.
const MAX_DEFERRED_PATTERNS: usize = 16;

/// The invalidations waiting for the backend.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    /// Set whenever something is remembered; cleared by a complete replay. Reads check it.
    pending: AtomicBool,
    set: Mutex<DeferredSet>,
    /// Set while a replay runs (one at a time, in the background).
    replaying: AtomicBool,
    /// Advanced by every removal this service makes: a load that began at one epoch and ends at
    /// another may predate an invalidation.
    pub(crate) epoch: AtomicU64,
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
        if self.len() > MAX_DEFERRED || self.patterns.len() > MAX_DEFERRED_PATTERNS {
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

    /// Claims the one replay run; `false` if one is running.
    fn claim_replay(&self) -> bool {
        self.replaying
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn take(&self) -> DeferredSet {
        std::mem::take(&mut *self.set.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn put_back(&self, rest: DeferredSet) {
        if !rest.is_empty() {
            self.set
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(rest);
        }
    }

    /// Ends a replay run: lets reads through again if nothing remains or was remembered meanwhile.
    fn finish_replay(&self) {
        let set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if set.is_empty() {
            self.pending.store(false, Ordering::Release);
        }
        self.replaying.store(false, Ordering::Release);
    }
}

/// Whether a removal that failed with `error` should be remembered and tried again: the backend
/// was not reached, or answered with a reply that passes (a replica, a busy or loading server).
/// Other replies (no permission, say) would fail again forever.
fn worth_retrying(error: &CacheError) -> bool {
    error.is_skipped()
        || error.fault_kind().is_some_and(|kind| {
            kind.is_transport() || matches!(kind, FaultKind::Busy | FaultKind::ReadOnly)
        })
}

impl CacheService {
    /// Lets a read reach the backend only if no invalidation waits to be applied. Otherwise it
    /// starts replaying them in the background (unless a replay runs) and refuses: the read goes
    /// to the loader, and reads reach the backend again once a replay has applied everything.
    /// On the hit path: one atomic load when nothing waits.
    #[inline]
    pub(crate) fn read_gate(&self) -> Result<(), CacheError> {
        if self.inner.deferred.is_pending() {
            return Err(self.start_replay());
        }
        Ok(())
    }

    /// Starts the background replay unless one runs; returns the refusal for the read.
    #[cold]
    fn start_replay(&self) -> CacheError {
        let deferred = &self.inner.deferred;
        if deferred.claim_replay() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clone().replay_deferred());
                }
                Err(_) => deferred.finish_replay(),
            }
        }
        CacheError::InvalidationsPending
    }

    /// One replay run: applies the remembered removals, keeping what it applied even if a later
    /// one fails; what fails for a passing reason waits for the next run.
    async fn replay_deferred(self) {
        let inner = &*self.inner;
        let deferred = &inner.deferred;
        let guard = self.guard();
        let backend = guard.backend();
        let budget = Budget::default();
        let mut rest = deferred.take();
        let mut applied = 0u64;
        let everything = self.physical_pattern("*");
        // Each step: `Ok(true)` applied, `Ok(false)` given up (a reply that would fail again
        // forever), `Err` stop and keep the rest for the next run.
        let outcome = |result: Result<u64, CacheError>, what: &str| match result {
            Ok(_) => Ok(true),
            Err(error) if worth_retrying(&error) => Err(error),
            Err(error) => {
                tracing::error!(%error, what, "cachekit: a remembered invalidation cannot be applied; dropping it");
                Ok(false)
            }
        };
        let run: Result<(), CacheError> = async {
            if rest.overflowed {
                let walk = backend.delete_matching(&everything);
                let result = guard.call("replay", Bound::Admin, &budget, walk).await;
                outcome(result, "the whole prefix")?;
                rest.overflowed = false;
                applied += 1;
                return Ok(());
            }
            if !rest.keys.is_empty() {
                let keys: Vec<String> = rest.keys.iter().cloned().collect();
                let result = guard
                    .call("replay", Bound::Admin, &budget, backend.delete_many(&keys))
                    .await;
                outcome(result, "keys")?;
                applied += keys.len() as u64;
                rest.keys.clear();
            }
            let patterns: Vec<String> = rest.patterns.iter().cloned().collect();
            for pattern in patterns {
                let walk = backend.delete_matching(&pattern);
                let result = guard.call("replay", Bound::Admin, &budget, walk).await;
                outcome(result, "a pattern")?;
                applied += 1;
                rest.patterns.remove(&pattern);
            }
            Ok(())
        }
        .await;
        inner
            .counters
            .invalidations_replayed
            .fetch_add(applied, Ordering::Relaxed);
        match run {
            Ok(()) => tracing::info!(
                applied,
                "cachekit: applied the invalidations that could not reach the backend"
            ),
            Err(error) => {
                tracing::debug!(%error, applied, "cachekit: replay of remembered invalidations stopped; it resumes with the next read")
            }
        }
        // A read that went to the store just before a removal was remembered may have put the
        // old value in the tier; the removals are applied now, so nothing there predates them.
        if let Some(tier) = &inner.tier {
            tier.flush();
        }
        deferred.put_back(rest);
        deferred.finish_replay();
    }

    /// The one removal path: the in-process tier, the fallback store, then the backend; a
    /// removal the backend could not receive is remembered. Every removal also advances the
    /// invalidation epoch, which a load checks before it writes to the fallback store.
    ///
    /// The tier is evicted before the backend is asked (its readers stop serving the old value
    /// at once) and again once the backend has answered, whatever it answered: a read of this
    /// service that went to the backend before the removal landed there cannot fill the tier
    /// after it, so a read after this returns never sees an older value here.
    pub(crate) async fn remove(&self, removal: Removal<'_>) -> Result<u64, CacheError> {
        let inner = &*self.inner;
        self.evict_local(removal);
        inner.deferred.epoch.fetch_add(1, Ordering::AcqRel);
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
        self.evict_local(removal);
        if let Err(e) = &result
            && worth_retrying(e)
        {
            inner.deferred.remember(removal, &inner.counters);
        }
        result
    }

    /// Takes what `removal` removes out of the in-process tier, if there is one.
    pub(crate) fn evict_local(&self, removal: Removal<'_>) {
        if let Some(tier) = &self.inner.tier {
            match removal {
                Removal::Key(physical) => tier.evict_physical(physical),
                Removal::Pattern(pattern) => tier.evict_matching(pattern),
            }
        }
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
