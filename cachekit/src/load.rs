//! The cache-aside state machine every `get_or_load` and `#[cached]` call runs:
//!
//! ```text
//! read ─hit─▶ done
//!  │miss
//!  ▼
//! flight ─follower─▶ wait ─value it may receive─▶ done
//!  │leader            └─none (leader failed, or value unproven and came late)─▶ join again
//!  ▼
//! lease ─value found─▶ done          (waits while another process holds the lease)
//!  │acquired / unavailable / gave up
//!  ▼
//! load (renewing the lease) ─▶ fill under the lease, or give it back ─▶ done
//! ```
//!
//! The rule that keeps it correct under faults: a loaded value is written, or handed to a
//! follower that joined after the load began, only through a fill that proves the lease
//! survived (no invalidation since the load began). When the lease could not be taken or
//! confirmed, nothing is written and only followers that joined before the load began receive
//! the value. And once one step of a call met a timeout, an unreachable backend or the open
//! breaker, the rest of the call skips the backend ([`Budget`]).

use crate::backend::Lease;
use crate::flight::{self, Leader, Outcome, Role, Shared};
use crate::fresh::Freshness;
use crate::guard::{Bound, Budget};
use crate::invalidate::Removal;
use crate::lease::LeaseGuard;
use crate::stats::Counters;
use crate::{CacheError, CacheService, Fetched};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// Where a loader stands with respect to the key's lease.
enum LeaseState {
    /// Leases are off.
    Off,
    /// This caller holds the lease.
    Ours(LeaseGuard),
    /// The store could not be asked, or did not answer in time.
    Unavailable,
    /// Another caller held the lease for longer than this one would wait.
    GaveUp,
}

/// The outcome of settling a held lease: `Ok(true)` the value was filled or the lease given
/// back intact (no invalidation meanwhile), `Ok(false)` an invalidation voided it, `Err(())`
/// the store did not answer (the lease guard gives the marker back in the background).
type Settled = Result<bool, ()>;

impl CacheService {
    /// The one load path every cache-aside call takes: read (through the in-process tier if
    /// `local`); on a miss, load once per key in this process (single-flight) and, under a
    /// lease, once per key across processes; store what `store_if` accepts unless the key was
    /// invalidated while loading.
    ///
    /// With refresh-ahead or a grace period (`fresh`, or the service's), the read knows the
    /// value's TTL left, and a value near or past it takes the path of `fresh.rs`.
    #[tracing::instrument(
        level = "debug",
        name = "cachekit.get_or_load",
        skip_all,
        fields(
            namespace = crate::metrics::namespace_of(key),
            key = %self.log_key(key),
            hit = tracing::field::Empty,
            tier = tracing::field::Empty,
            lease = tracing::field::Empty,
            stale = tracing::field::Empty,
        )
    )]
    pub(crate) async fn load_through<T, E, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        local: bool,
        fresh: Freshness,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let fetched = self
            .load_through_untraced(key, ttl, local, fresh, store_if, load)
            .await;
        if let Ok(fetched) = &fetched
            && tracing::level_enabled!(tracing::Level::DEBUG)
        {
            let span = tracing::Span::current();
            span.record("hit", fetched.from_cache);
            if fetched.stale {
                span.record("stale", true);
            }
        }
        fetched
    }

    /// [`load_through`](Self::load_through) inside its span.
    async fn load_through_untraced<T, E, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        local: bool,
        fresh: Freshness,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let fresh = if self.inner.versioned {
            fresh.over(self.inner.fresh)
        } else {
            Freshness::INHERIT
        };
        if !fresh.is_off() {
            let load = self.metered(key, load);
            return self
                .load_fresh(key, ttl, local, fresh, store_if, load)
                .await;
        }
        let budget = Budget::default();
        if let Some(value) = self.get_within::<T>(key, local, &budget).await {
            return Ok(Fetched::hit(value));
        }
        // Wrapped only now: a hit never builds the load's span and timer.
        let load = self.metered(key, load);
        let physical = self.physical_key(key);
        self.load_missing(key, &physical, ttl, store_if, load, &budget)
            .await
    }

    /// `load` in a `cachekit.load` span, counted and timed for the metrics when they are on.
    pub(crate) fn metered<T, E>(
        &self,
        key: &str,
        load: impl Future<Output = Result<T, E>>,
    ) -> impl Future<Output = Result<T, E>> {
        let counters = &self.inner.counters;
        let span = tracing::debug_span!(
            "cachekit.load",
            namespace = crate::metrics::namespace_of(key),
            key = %self.log_key(key),
            failed = tracing::field::Empty,
        );
        let traced = span.clone();
        async move {
            let started = counters.metrics.as_ref().map(|_| Instant::now());
            let loaded = load.await;
            if loaded.is_err() {
                span.record("failed", true);
            }
            if let Some(started) = started {
                counters.loaded(key, started.elapsed(), loaded.is_ok());
            }
            loaded
        }
        .instrument(traced)
    }

    /// The miss path: single-flight in this process, the lease across processes, the load,
    /// and the fill under the lease.
    pub(crate) async fn load_missing<T, E, Fut>(
        &self,
        key: &str,
        physical: &str,
        ttl: Option<Duration>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
        budget: &Budget,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        if !inner.single_flight {
            return self
                .load_leased(key, physical, ttl, store_if, load, None, budget)
                .await
                .map(|(fetched, _)| fetched);
        }
        // Followers of a leader that failed join again, so one loader runs at a time here; a
        // caller waits for this process's loaders as long as for another process's lease.
        let deadline = tokio::time::Instant::now() + inner.lease_ttl;
        loop {
            match inner.flights.join(physical) {
                Role::Leader(leader) => {
                    let (fetched, outcome) = self
                        .load_leased(key, physical, ttl, store_if, load, Some(&leader), budget)
                        .await?;
                    if let Some(outcome) = outcome {
                        leader.finish(outcome);
                    }
                    return Ok(fetched);
                }
                Role::Follower(follower) => {
                    match tokio::time::timeout_at(deadline, flight::wait(follower)).await {
                        Ok(Some(bytes)) => {
                            if let Ok(value) = inner.format.decode::<T>(key, &bytes) {
                                inner.counters.load_coalesced(key);
                                return Ok(Fetched::hit(value));
                            }
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        tracing::debug!(
            key = %self.log_key(key),
            "gave up waiting for this process's loader of the key; loading without caching"
        );
        load.await.map(Fetched::loaded)
    }

    /// Loads under a lease (when leases are on): takes it, or waits for its holder's value, or
    /// gives up waiting after the lease TTL; then loads, renewing the lease, and fills the key
    /// only if the lease survived. Also returns what single-flight followers may receive.
    #[allow(clippy::too_many_arguments)] // one private step of the state machine
    async fn load_leased<T, E, Fut>(
        &self,
        key: &str,
        physical: &str,
        ttl: Option<Duration>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
        flight: Option<&Leader<'_>>,
        budget: &Budget,
    ) -> Result<(Fetched<T>, Option<Outcome>), E>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, E>>,
    {
        let lease = if self.inner.leases {
            match self.take_lease::<T>(key, physical, flight, budget).await {
                Ok(lease) => lease,
                Err(hit) => return Ok(hit),
            }
        } else {
            LeaseState::Off
        };

        if let Some(flight) = flight {
            flight.mark(); // followers so far began before the load
        }
        // Removals made here from now on would find the fallback store already cleared: a value
        // loaded across one must not be written there after it.
        let epoch = self.inner.deferred.epoch.load(Ordering::Acquire);
        let loaded = match &lease {
            LeaseState::Ours(held) => self.load_renewing(held, budget, load).await,
            _ => load.await,
        };
        let value = match loaded {
            Ok(value) => value,
            Err(error) => {
                // Give the lease back before returning, so the next caller finds the key empty.
                // (On a panic or a cancellation the guard gives it back in the background.)
                if let LeaseState::Ours(mut held) = lease
                    && self.release(&held, budget).await.is_ok()
                {
                    held.disarm();
                }
                return Err(error);
            }
        };
        let bytes = match self.encode(key, &value) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "loaded value not cached");
                None
            }
        };
        let store = bytes.is_some() && store_if(&value);
        if let Some(flight) = flight {
            flight.close();
        }
        let proven = match (lease, &bytes) {
            (LeaseState::Ours(mut held), Some(bytes)) if store => {
                let settled = self.fill(key, &held, bytes, ttl, budget, epoch).await;
                settle(&mut held, settled)
            }
            (LeaseState::Ours(mut held), _) => {
                let settled = self.release(&held, budget).await;
                settle(&mut held, settled)
            }
            (LeaseState::Off, Some(bytes)) => {
                // Leases off: no proof is asked for, none is given.
                if store && !budget.is_spent() {
                    self.store(key, bytes, ttl, budget).await;
                }
                true
            }
            (LeaseState::Off, None) => true,
            (LeaseState::Unavailable, Some(bytes)) => {
                // Only the in-process fallback store, whose staleness is its documented
                // trade-off, takes a value no lease vouches for.
                if store {
                    self.store_fallback_since(epoch, key, bytes, ttl).await;
                }
                false
            }
            (LeaseState::Unavailable | LeaseState::GaveUp, _) => false,
        };
        let outcome = bytes.map(|bytes| Outcome {
            bytes: Shared::from(bytes),
            proven,
        });
        Ok((Fetched::loaded(value), outcome))
    }

    /// Takes the lease on a missing key, or waits for the holder's value (returned as `Err`,
    /// the early exit), or gives up after the lease TTL.
    async fn take_lease<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        physical: &str,
        flight: Option<&Leader<'_>>,
        budget: &Budget,
    ) -> Result<LeaseState, (Fetched<T>, Option<Outcome>)> {
        let inner = &*self.inner;
        if budget.is_spent() {
            return Ok(LeaseState::Unavailable);
        }
        let guard = self.guard();
        let deadline = tokio::time::Instant::now() + inner.lease_ttl;
        let mut pause = Duration::from_millis(1);
        loop {
            // Each attempt reads the store: none while an invalidation waits to be applied.
            if let Err(error) = self.read_gate() {
                self.degraded("lease", key, &error);
                return Ok(LeaseState::Unavailable);
            }
            if let Some(flight) = flight {
                flight.mark(); // followers so far began before this read of the store
            }
            // Armed before the request is sent: if this call is cancelled, or the request
            // fails or times out (and may still run on the server), the marker is given back.
            let mut lease = LeaseGuard::new(self, physical);
            let attempt = guard
                .backend()
                .try_lease(physical, &lease.marker, inner.beat.ttl);
            match guard.call("lease", Bound::Op, budget, attempt).await {
                Ok(Lease::Acquired) => {
                    tracing::Span::current().record("lease", "taken");
                    return Ok(LeaseState::Ours(lease));
                }
                Ok(Lease::Value(bytes)) => {
                    lease.disarm(); // the script wrote no marker
                    let decoded = self
                        .decode_or_remove::<T>(key, physical, Some(&bytes), budget)
                        .await;
                    if let Ok(Some(value)) = decoded {
                        let outcome = Outcome {
                            bytes: Shared::from(bytes),
                            proven: false,
                        };
                        tracing::Span::current().record("lease", "waited");
                        return Err((Fetched::hit(value), Some(outcome)));
                    }
                    // Undecodable, now removed: try again.
                }
                Ok(Lease::Held) => lease.disarm(),
                Err(error @ CacheError::TooLarge { .. }) => {
                    lease.disarm(); // the script wrote no marker
                    self.remove_unreadable(key, physical, &error, budget).await;
                }
                Err(error) => {
                    if error.is_skipped() {
                        lease.disarm(); // the request was never sent
                    }
                    self.degraded("lease", key, &error);
                    return Ok(LeaseState::Unavailable); // an armed `lease` gives it back
                }
            }
            if budget.is_spent() {
                return Ok(LeaseState::Unavailable);
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::debug!(key = %self.log_key(key), "gave up waiting for another loader's lease");
                tracing::Span::current().record("lease", "gave_up");
                return Ok(LeaseState::GaveUp);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Runs the loader while renewing the lease, so a loader slower than the marker's TTL keeps
    /// it. A renewal that finds the marker gone stops renewing (the fill will be refused).
    async fn load_renewing<T, E>(
        &self,
        held: &LeaseGuard,
        budget: &Budget,
        load: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let beat = self.inner.beat;
        let guard = self.guard();
        let renewing = async {
            loop {
                tokio::time::sleep(beat.every).await;
                let renew = guard
                    .backend()
                    .renew(&held.physical, &held.marker, beat.ttl);
                match guard.call("renew", Bound::Op, budget, renew).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) if budget.is_spent() => break,
                    Err(_) => {}
                }
            }
            std::future::pending::<()>().await;
        };
        let mut load = std::pin::pin!(load);
        let renewing = std::pin::pin!(renewing);
        tokio::select! {
            biased;
            loaded = &mut load => loaded,
            // `renewing` never completes; if it did, the load would simply go on.
            () = renewing => load.await,
        }
    }

    /// Writes a loaded value under the lease: refused if the key was invalidated since the
    /// lease was taken.
    async fn fill(
        &self,
        key: &str,
        held: &LeaseGuard,
        bytes: &[u8],
        ttl: Option<Duration>,
        budget: &Budget,
        epoch: u64,
    ) -> Settled {
        let inner = &*self.inner;
        let ttl = match self.ttl(ttl) {
            Ok(ttl) => ttl,
            Err(error) => {
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "value not cached");
                return self.release(held, budget).await;
            }
        };
        if self.read_gate().is_err() {
            // An invalidation waits to be applied: it may be this key's. No write; the lease
            // is given back in the background.
            return Err(());
        }
        let guard = self.guard();
        let fill = guard
            .backend()
            .fill(&held.physical, &held.marker, bytes, ttl);
        let filled = guard.call("fill", Bound::Op, budget, fill).await;
        self.evict_local(Removal::Key(&held.physical));
        match filled {
            Ok(true) => {
                Counters::bump(&inner.counters.sets);
                Ok(true)
            }
            Ok(false) => {
                inner.counters.stale_set_prevented(key);
                tracing::debug!(
                    key = %self.log_key(key),
                    "loaded value not cached: the key was invalidated while it loaded"
                );
                Ok(false)
            }
            Err(error) => {
                self.degraded("set", key, &error);
                self.store_fallback_since(epoch, key, bytes, Some(ttl))
                    .await;
                Err(())
            }
        }
    }

    /// Writes a loaded value to the fallback store, unless this service removed anything since
    /// the load began (the removal cleared the fallback store before the value existed).
    async fn store_fallback_since(
        &self,
        epoch: u64,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) {
        if self.inner.deferred.epoch.load(Ordering::Acquire) == epoch {
            self.store_fallback(key, bytes, ttl).await;
        }
    }

    /// Gives a lease back; `Ok(true)` if it was still held (no invalidation meanwhile).
    async fn release(&self, held: &LeaseGuard, budget: &Budget) -> Settled {
        let guard = self.guard();
        let release = guard.backend().release(&held.physical, &held.marker);
        guard
            .call("release", Bound::Op, budget, release)
            .await
            .map_err(|_| ())
    }
}

/// Disarms the lease guard once the store answered, and says whether the value is proven.
fn settle(held: &mut LeaseGuard, settled: Settled) -> bool {
    match settled {
        Ok(proven) => {
            held.disarm();
            proven
        }
        Err(()) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn memory_with(leases: bool, single_flight: bool) -> CacheService {
        CacheService::builder()
            .memory(1 << 20)
            .leases(leases)
            .single_flight(single_flight)
            .build()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_run_the_loader_once() {
        let cache = memory_with(true, true).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, runs) = (cache.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("hot", None, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::io::Error>(7u32)
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(cache.stats().coalesced > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_single_flight_or_leases_every_miss_loads() {
        let cache = memory_with(false, false).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, runs, barrier) = (cache.clone(), runs.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("hot", None, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        barrier.wait().await; // every caller is inside its loader at once
                        Ok::<_, std::io::Error>(7u32)
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_failed_or_panicking_loader_does_not_wedge_the_key() {
        let cache = memory_with(true, true).await;
        let failed: Result<u32, &str> = cache
            .get_or_load("k", None, || async { Err("db down") })
            .await;
        assert_eq!(failed, Err("db down"));
        assert_eq!(cache.get::<u32>("k").await, None, "errors are not cached");

        let panicking = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("k", None, || async {
                        panic!("loader panicked");
                        #[allow(unreachable_code)]
                        Ok::<u32, std::io::Error>(0)
                    })
                    .await
            })
        };
        assert!(panicking.await.is_err());
        let value = cache
            .get_or_load("k", None, || async { Ok::<_, std::io::Error>(3u32) })
            .await
            .unwrap();
        assert_eq!(value, 3);
        assert_eq!(cache.get::<u32>("k").await, Some(3));
    }

    /// Starts a `get_or_load` whose loader stops inside the load until the returned `Notify`
    /// is notified, and returns once the loader is running.
    async fn start_blocked_load(
        cache: &CacheService,
        key: &'static str,
        value: &'static str,
    ) -> (tokio::task::JoinHandle<String>, Arc<tokio::sync::Notify>) {
        let loading = Arc::new(tokio::sync::Notify::new());
        let go_on = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (cache, loading, go_on) = (cache.clone(), loading.clone(), go_on.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(key, None, || async {
                        loading.notify_one();
                        go_on.notified().await;
                        Ok::<_, std::io::Error>(value.to_string())
                    })
                    .await
                    .unwrap()
            })
        };
        loading.notified().await;
        (task, go_on)
    }

    /// A caller that arrives after an invalidation must not be handed the value an earlier
    /// caller was loading when the invalidation happened.
    #[tokio::test]
    async fn a_follower_arriving_after_an_invalidation_does_not_get_the_stale_load() {
        let cache = memory_with(true, true).await;
        let (early, go_on) = start_blocked_load(&cache, "users:1", "old").await;
        cache.delete("users:1").await; // the writer's invalidation
        let late = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("users:1", None, || async {
                        Ok::<_, std::io::Error>("new".to_string())
                    })
                    .await
                    .unwrap()
            })
        };
        tokio::task::yield_now().await;
        go_on.notify_one();
        assert_eq!(early.await.unwrap(), "old");
        assert_eq!(late.await.unwrap(), "new");
        assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("new"));
    }

    /// A reader loads the old row; a writer invalidates while it loads; the reader's write must
    /// not land. With leases off the stale value does land, which shows the test can fail.
    #[tokio::test]
    async fn an_invalidation_during_a_load_refuses_the_stale_write() {
        for leases in [true, false] {
            let cache = memory_with(leases, true).await;
            let (reader, go_on) = start_blocked_load(&cache, "users:1", "old").await;
            cache.invalidate_pattern("users:*").await; // the writer's invalidation
            go_on.notify_one();
            assert_eq!(
                reader.await.unwrap(),
                "old",
                "the caller still gets what it loaded"
            );
            let cached = cache.get::<String>("users:1").await;
            if leases {
                assert_eq!(cached, None);
                assert_eq!(cache.stats().stale_sets_prevented, 1);
            } else {
                assert_eq!(
                    cached.as_deref(),
                    Some("old"),
                    "without leases the stale set lands"
                );
            }
        }
    }
}
