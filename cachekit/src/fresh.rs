//! Refresh-ahead and stale-if-error: what a cache-aside call does with a value close to, or
//! past, its TTL.
//!
//! ```text
//! read (value, TTL left, version) ─none─▶ the miss path of load.rs (lease, load, fill)
//!  │ fresh                          │ past its TTL, within its grace period
//!  ▼                                ▼
//! draw (XFetch) ─no─▶ hit           claim ─taken─▶ reload ─ok─▶ refill if still at version
//!  │ yes                              │held            └─failed─▶ read again: unchanged? stale
//!  ▼                                  ▼                                      else the error
//! claim ─taken─▶ reload ─▶ refill    wait, read again: fresh ▶ hit, gone ▶ miss path, else claim
//!  └held─▶ hit (the current value)
//! ```
//!
//! A key with a grace period is stored for its TTL plus the grace period, so the store's TTL
//! left tells both: `left > grace` is fresh, `left <= grace` is past the TTL. The claim (a
//! short-lived key beside the entry, renewed while the loader runs) keeps the fleet to one
//! reload per key; what keeps a reload from writing over an invalidation is the refill's
//! condition: the key must still be at the version read (Redis: its `PEXPIRETIME`, which any
//! write changes and any removal takes away). So no stale value is written, with or without
//! the claim, and a value that an invalidation removed is never served as stale: the stale
//! value is served only after reading again that the key still holds it, at that version.

use crate::backend::is_lease_marker;
use crate::config::MAX_TTL;
use crate::error::FaultKind;
use crate::guard::{Bound, Budget};
use crate::invalidate::Removal;
use crate::lease::new_marker;
use crate::metrics::Tier;
use crate::stats::Counters;
use crate::{CacheError, CacheService, Fetched};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Refresh-ahead and stale-if-error settings of one cache-aside call: its own (from
/// `#[cached(refresh_ahead, grace = ...)]`), or the service's where it sets none. Built by
/// the code `#[cached]` generates; not a public API.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Freshness {
    /// The XFetch `beta`, when refresh-ahead is on.
    beta: Option<f64>,
    /// How long a value is kept past its TTL for stale-if-error.
    grace: Option<Duration>,
}

impl Freshness {
    /// Settings that leave both to the service.
    pub const INHERIT: Self = Self {
        beta: None,
        grace: None,
    };

    /// Refresh-ahead with `beta` and stale-if-error with `grace`, each `None` to leave it to
    /// the service. The macro has checked both.
    pub const fn new(beta: Option<f64>, grace: Option<Duration>) -> Self {
        Self { beta, grace }
    }

    /// A call's settings, the service's where the call sets none.
    pub(crate) fn over(self, service: Self) -> Self {
        Self {
            beta: self.beta.or(service.beta),
            grace: self.grace.or(service.grace),
        }
    }

    /// Neither refresh-ahead nor a grace period.
    pub(crate) fn is_off(&self) -> bool {
        self.beta.is_none() && self.grace().is_zero()
    }

    /// The grace period, zero when there is none.
    pub(crate) fn grace(&self) -> Duration {
        self.grace.unwrap_or(Duration::ZERO)
    }
}

/// How long recent loads took, per key, for refresh-ahead's draw: the key's own last load when
/// this process ran one, else the last load of any key. Bounded; made on first use.
#[derive(Debug, Default)]
pub(crate) struct LoadTimes {
    per_key: OnceLock<moka::sync::Cache<String, u32>>,
    /// The last load of any key, in microseconds (0: none yet).
    any: AtomicU64,
}

/// Keys whose load time is remembered.
const LOAD_TIMES_KEPT: u64 = 10_000;

impl LoadTimes {
    fn per_key(&self) -> &moka::sync::Cache<String, u32> {
        self.per_key
            .get_or_init(|| moka::sync::Cache::new(LOAD_TIMES_KEPT))
    }

    fn record(&self, physical: &str, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        self.any.store(u64::from(micros), Ordering::Relaxed);
        self.per_key().insert(physical.to_owned(), micros);
    }

    /// The load time to draw against, if any load was seen.
    fn of(&self, physical: &str) -> Option<Duration> {
        let micros = match self.per_key.get().and_then(|keys| keys.get(physical)) {
            Some(micros) => u64::from(micros),
            None => self.any.load(Ordering::Relaxed),
        };
        (micros > 0).then(|| Duration::from_micros(micros))
    }
}

/// The XFetch draw: refresh when `delta * beta * -ln(rand) >= left`, `rand` uniform in (0, 1].
pub(crate) fn draws_refresh(delta: Duration, beta: f64, left: Duration, rand: f64) -> bool {
    let rand = rand.clamp(f64::MIN_POSITIVE, 1.0);
    delta.as_secs_f64() * beta * -rand.ln() >= left.as_secs_f64()
}

/// Refresh-ahead's beta when it is asked for without one.
const DEFAULT_BETA: f64 = 1.0;

/// One cache-aside call on its way through this module.
#[derive(Clone, Copy)]
struct Step<'a> {
    key: &'a str,
    physical: &'a str,
    ttl: Option<Duration>,
    local: bool,
    fresh: Freshness,
    budget: &'a Budget,
}

/// A value read with its freshness.
struct Found<T> {
    value: T,
    /// The TTL it has left before it is stale; `None` if it has no TTL (fresh until removed).
    fresh_left: Option<Duration>,
    version: u64,
    /// The stored bytes (empty for a tier hit): with the version, what a refill and a stale
    /// value are conditioned on.
    bytes: Vec<u8>,
}

/// How [`read_fresh`](CacheService::read_fresh) reads.
#[derive(Debug, Clone, Copy)]
struct ReadHow {
    /// Through the in-process tier.
    local: bool,
    /// The grace period, subtracted from the TTL left.
    grace: Duration,
    /// Refresh-ahead's beta: the tier then stops holding a value where reads draw.
    beta: Option<f64>,
    /// Counted as a hit or miss (a waiter's reads again are not).
    count: bool,
}

impl ReadHow {
    fn of(fresh: Freshness, local: bool) -> Self {
        Self {
            local,
            grace: fresh.grace(),
            beta: fresh.beta,
            count: true,
        }
    }
}

/// The in-process tier holds a value refresh-ahead may refresh until this many `delta * beta`
/// before its expiry; reads after that go to the store and draw. A read `left` before expiry
/// draws with probability `e^(-left / (delta * beta))`: about 2% where the window starts,
/// rising to 1 at expiry, so a key read every few milliseconds is drawn early in the window.
const DRAW_WINDOW: f64 = 4.0;

impl<T> Found<T> {
    fn is_stale(&self) -> bool {
        self.fresh_left.is_some_and(|left| left.is_zero())
    }
}

/// What a caller that found a value past its TTL does next.
enum Next<T> {
    /// Reload under the claim it took.
    Reload(Found<T>, Vec<u8>),
    /// Load without writing (the store does not answer, or the claim's holder took too long);
    /// on failure, serve what was found if it is still there.
    LoadOnly(Found<T>),
    /// The key is gone: the miss path.
    Missing,
    /// Another caller refreshed it.
    Hit(T),
}

/// The answer to a claim.
enum Claim {
    Taken,
    Held,
    Failed,
}

impl CacheService {
    /// The cache-aside call with refresh-ahead or stale-if-error on.
    pub(crate) async fn load_fresh<T, E, Fut>(
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
        let budget = Budget::default();
        let physical = self.physical_key(key);
        let read = self
            .read_fresh::<T>(key, &physical, ReadHow::of(fresh, local), &budget)
            .await;
        let step = Step {
            key,
            physical: &physical,
            ttl,
            local,
            fresh,
            budget: &budget,
        };
        self.load_fresh_from(step, read, store_if, load).await
    }

    /// [`load_fresh`](Self::load_fresh) once the key was read.
    async fn load_fresh_from<T, E, Fut>(
        &self,
        step: Step<'_>,
        read: Result<Option<Found<T>>, CacheError>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let Step {
            key,
            physical,
            ttl,
            local,
            fresh,
            budget,
        } = step;
        let inner = &*self.inner;
        let grace = fresh.grace();
        let store_ttl = self.store_ttl(ttl, grace);
        let load = async {
            let started = Instant::now();
            let loaded = load.await;
            if fresh.beta.is_some() {
                inner.load_times.record(physical, started.elapsed());
            }
            loaded
        };
        let found = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                return self
                    .load_missing(key, physical, store_ttl, store_if, load, budget)
                    .await;
            }
            Err(error) => {
                // The store did not answer, refused the read (Redis before 7.0 has no
                // `PEXPIRETIME`), or an invalidation waits to be applied: no lease, since what
                // the key holds may be past its TTL, and no write.
                self.degraded("get", key, &error);
                if let Some(value) = self.fallback_get(key).await {
                    return Ok(Fetched::hit(value));
                }
                return load.await.map(Fetched::loaded);
            }
        };
        if !found.is_stale() {
            if !self.draws_refresh(fresh, &found, physical) {
                return Ok(Fetched::hit(found.value));
            }
            let marker = new_marker();
            if !matches!(self.claim(physical, &marker, budget).await, Claim::Taken) {
                return Ok(Fetched::hit(found.value));
            }
            let reloaded = self
                .reload(
                    key,
                    physical,
                    &marker,
                    (found.version, &found.bytes),
                    store_ttl,
                    store_if,
                    load,
                    budget,
                )
                .await;
            return Ok(match reloaded {
                Ok(value) => Fetched::loaded(value),
                Err(_) => {
                    tracing::debug!(key = %self.log_key(key), "refresh-ahead's loader failed; serving the current value");
                    Fetched::hit(found.value)
                }
            });
        }
        match self
            .next_for_stale(key, physical, ReadHow::of(fresh, local), found, budget)
            .await
        {
            Next::Hit(value) => Ok(Fetched::hit(value)),
            Next::Missing => {
                self.load_missing(key, physical, store_ttl, store_if, load, budget)
                    .await
            }
            Next::Reload(found, marker) => {
                let reloaded = self
                    .reload(
                        key,
                        physical,
                        &marker,
                        (found.version, &found.bytes),
                        store_ttl,
                        store_if,
                        load,
                        budget,
                    )
                    .await;
                match reloaded {
                    Ok(value) => Ok(Fetched::loaded(value)),
                    Err(error) => {
                        self.serve_stale(key, physical, found, grace, error, budget)
                            .await
                    }
                }
            }
            Next::LoadOnly(found) => match load.await {
                Ok(value) => Ok(Fetched::loaded(value)),
                Err(error) => {
                    self.serve_stale(key, physical, found, grace, error, budget)
                        .await
                }
            },
        }
    }

    /// [`get_or_load`](Self::get_or_load) with refresh-ahead run in the background: a caller
    /// that draws a refresh gets the current value at once, and the loader runs in a task of
    /// its own (under the refresh claim, written back only if the key was neither written nor
    /// removed meanwhile), so no caller of a hot key waits for the loader. For that, the loader
    /// owns what it uses (`'static`) and is `Send`. Refresh-ahead uses the service's beta, or
    /// 1.0 if the service has none; the service's grace period applies as in `get_or_load`.
    /// Misses and values past their TTL load in the caller, as in `get_or_load`.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// use std::time::Duration;
    /// let cache = cachekit::CacheService::memory();
    /// let db = std::sync::Arc::new("a pool".to_string());
    /// let load = move || async move { Ok::<_, std::io::Error>(format!("read from {db}")) };
    /// let user = cache.get_or_refresh("users:1", Some(Duration::from_secs(60)), load).await;
    /// assert_eq!(user.unwrap(), "read from a pool");
    /// # });
    /// ```
    pub async fn get_or_refresh<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        if !self.inner.versioned {
            // A store without TTLs: values are fresh until they expire.
            return self.get_or_load(key, ttl, load).await;
        }
        let service = self.inner.fresh;
        let fresh = Freshness::new(Some(service.beta.unwrap_or(DEFAULT_BETA)), service.grace);
        let budget = Budget::default();
        let physical = self.physical_key(key);
        let read = self
            .read_fresh::<T>(key, &physical, ReadHow::of(fresh, true), &budget)
            .await;
        if let Ok(Some(found)) = &read
            && !found.is_stale()
        {
            let Ok(Some(found)) = read else {
                unreachable!("matched just above")
            };
            if self.draws_refresh(fresh, &found, &physical) {
                let marker = new_marker();
                if let Claim::Taken = self.claim(&physical, &marker, &budget).await {
                    let service = self.clone();
                    let (key, store_ttl) = (key.to_owned(), self.store_ttl(ttl, fresh.grace()));
                    let (version, expected) = (found.version, found.bytes);
                    let refresh = async move {
                        let load = async {
                            let started = Instant::now();
                            let loaded = service.metered(&key, load()).await;
                            service
                                .inner
                                .load_times
                                .record(&physical, started.elapsed());
                            loaded
                        };
                        let budget = Budget::default();
                        let _ = service
                            .reload(
                                &key,
                                &physical,
                                &marker,
                                (version, &expected),
                                store_ttl,
                                |_: &T| true,
                                load,
                                &budget,
                            )
                            .await;
                    };
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => drop(runtime.spawn(refresh)),
                        // Not on a Tokio runtime: nowhere to run it but here.
                        Err(_) => refresh.await,
                    }
                }
            }
            return Ok(found.value);
        }
        let step = Step {
            key,
            physical: &physical,
            ttl,
            local: true,
            fresh,
            budget: &budget,
        };
        self.load_fresh_from(step, read, |_| true, self.metered(key, load()))
            .await
            .map(|fetched| fetched.value)
    }

    /// The TTL a value is written for: the TTL plus the grace period (an invalid TTL is left
    /// for the write to refuse).
    pub(crate) fn store_ttl(&self, ttl: Option<Duration>, grace: Duration) -> Option<Duration> {
        match self.ttl(ttl) {
            Ok(ttl) => Some(ttl.saturating_add(grace).min(MAX_TTL)),
            Err(_) => ttl,
        }
    }

    /// Whether a read of a fresh value draws a refresh (XFetch), against the key's last load
    /// time (or any key's, for a key this process never loaded).
    fn draws_refresh<T>(&self, fresh: Freshness, found: &Found<T>, physical: &str) -> bool {
        match (fresh.beta, found.fresh_left) {
            (Some(beta), Some(left)) => self
                .inner
                .load_times
                .of(physical)
                .is_some_and(|delta| draws_refresh(delta, beta, left, 1.0 - fastrand::f64())),
            _ => false,
        }
    }

    /// A caller found a value past its TTL: it takes the claim to reload it, or waits for the
    /// holder's new value (reading again, as a lease waiter does), or gives up waiting after
    /// the lease TTL.
    async fn next_for_stale<T>(
        &self,
        key: &str,
        physical: &str,
        how: ReadHow,
        mut found: Found<T>,
        budget: &Budget,
    ) -> Next<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.inner.lease_ttl;
        let mut pause = Duration::from_millis(1);
        loop {
            let marker = new_marker();
            match self.claim(physical, &marker, budget).await {
                Claim::Taken => return Next::Reload(found, marker),
                Claim::Failed => return Next::LoadOnly(found),
                Claim::Held => {}
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::debug!(key = %self.log_key(key), "gave up waiting for another caller's refresh");
                return Next::LoadOnly(found);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
            match self
                .read_fresh::<T>(
                    key,
                    physical,
                    ReadHow {
                        count: false,
                        ..how
                    },
                    budget,
                )
                .await
            {
                Ok(None) => return Next::Missing,
                Ok(Some(again)) if !again.is_stale() => return Next::Hit(again.value),
                Ok(Some(again)) => found = again,
                Err(_) => return Next::LoadOnly(found),
            }
        }
    }

    /// Reads `key` with its TTL left (less the grace period) and version. A tier hit is fresh.
    /// Counts a fresh value as a hit, anything else as a miss; removes an undecodable value
    /// (unless it changed meanwhile).
    async fn read_fresh<T>(
        &self,
        key: &str,
        physical: &str,
        how: ReadHow,
        budget: &Budget,
    ) -> Result<Option<Found<T>>, CacheError>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let counters = &inner.counters;
        let count = |hit: bool| match (how.count, hit) {
            (false, _) => {}
            (true, true) => counters.hit(key, Tier::Store),
            (true, false) => counters.miss(key),
        };
        self.read_gate()?;
        let tier = inner.tier.as_ref().filter(|_| how.local);
        if let Some(tier) = tier
            && let Some(value) = tier.get::<T>(key)
        {
            if how.count {
                counters.hit(key, Tier::Local);
            }
            return Ok(Some(Found {
                value,
                fresh_left: None,
                version: 0,
                bytes: Vec::new(),
            }));
        }
        let ticket = tier.map(|tier| tier.ticket(key));
        let guard = self.guard();
        let read = guard.backend().get_versioned(physical);
        let read = match guard.call("get", Bound::Op, budget, read).await {
            Err(error)
                if matches!(
                    error.fault_kind(),
                    Some(FaultKind::TooLarge | FaultKind::WrongType)
                ) =>
            {
                self.remove_unreadable(key, physical, &error, budget).await;
                count(false);
                return Ok(None);
            }
            read => read?,
        };
        let Some(read) = read.filter(|read| !is_lease_marker(&read.bytes)) else {
            count(false);
            return Ok(None);
        };
        let value = match inner.format.decode::<T>(key, &read.bytes) {
            Ok(value) => value,
            Err(error) => {
                count(false);
                Counters::bump(&counters.decode_errors);
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "cached value did not decode into the requested type; removing it");
                let remove = guard.backend().release(physical, &read.bytes);
                let _ = guard.call("delete", Bound::Op, budget, remove).await;
                self.evict_local(Removal::Key(physical));
                return Ok(None);
            }
        };
        let found = Found {
            value,
            fresh_left: read.left.map(|left| left.saturating_sub(how.grace)),
            version: read.version,
            bytes: read.bytes,
        };
        count(!found.is_stale());
        if let (Some(tier), Some(ticket), Some(left)) = (tier, ticket, found.fresh_left) {
            // Never into the grace period; with refresh-ahead, not into the window where
            // reads draw, so that the store sees them.
            let window = match how.beta {
                Some(beta) => inner
                    .load_times
                    .of(physical)
                    .map_or(Duration::ZERO, |delta| delta.mul_f64(beta * DRAW_WINDOW)),
                None => Duration::ZERO,
            };
            if let Some(left) = left.checked_sub(window).filter(|left| !left.is_zero()) {
                let weight = inner.format.weight(&found.bytes);
                tier.fill(key, ticket, &found.value, weight, Some(left));
            }
        }
        Ok(Some(found))
    }

    /// Takes the refresh claim on `physical` for one lease beat (renewed while the loader
    /// runs).
    async fn claim(&self, physical: &str, marker: &[u8], budget: &Budget) -> Claim {
        if budget.is_spent() {
            return Claim::Failed;
        }
        let guard = self.guard();
        let claim = guard.backend().claim(physical, marker, self.inner.beat.ttl);
        match guard.call("claim", Bound::Op, budget, claim).await {
            Ok(true) => Claim::Taken,
            Ok(false) => Claim::Held,
            Err(_) => Claim::Failed,
        }
    }

    /// Runs the loader under the claim (renewing it), writes the new value back only if the key
    /// is still at `version`, and gives the claim back. A claim not given back (the call was
    /// cancelled, the store did not answer) lapses within one lease beat.
    #[allow(clippy::too_many_arguments)] // one private step of the state machine
    async fn reload<T, E, Fut>(
        &self,
        key: &str,
        physical: &str,
        marker: &[u8],
        (version, expected): (u64, &[u8]),
        store_ttl: Option<Duration>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
        budget: &Budget,
    ) -> Result<T, E>
    where
        T: Serialize,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        let guard = self.guard();
        let beat = inner.beat;
        let renewing = async {
            loop {
                tokio::time::sleep(beat.every).await;
                let renew = guard.backend().claim(physical, marker, beat.ttl);
                match guard.call("claim", Bound::Op, budget, renew).await {
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
        let loaded = tokio::select! {
            biased;
            loaded = &mut load => loaded,
            () = renewing => load.await,
        };
        if let Ok(value) = &loaded
            && store_if(value)
            && !budget.is_spent()
            && self.read_gate().is_ok()
        {
            self.refill(key, physical, (version, expected), value, store_ttl, budget)
                .await;
        }
        let release = guard.backend().release_claim(physical, marker);
        let _ = guard.call("claim", Bound::Op, budget, release).await;
        loaded
    }

    /// Writes a reloaded value if the key is still at `version`.
    async fn refill<T: Serialize>(
        &self,
        key: &str,
        physical: &str,
        (version, expected): (u64, &[u8]),
        value: &T,
        store_ttl: Option<Duration>,
        budget: &Budget,
    ) {
        let counters = &self.inner.counters;
        let (bytes, ttl) = match (self.encode(key, value), self.ttl(store_ttl)) {
            (Ok(bytes), Ok(ttl)) => (bytes, ttl),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "refreshed value not cached");
                return;
            }
        };
        let guard = self.guard();
        let refill = guard
            .backend()
            .refill(physical, version, expected, &bytes, ttl);
        let refilled = guard.call("set", Bound::Op, budget, refill).await;
        self.evict_local(Removal::Key(physical));
        match refilled {
            Ok(true) => counters.refreshed(key),
            Ok(false) => {
                counters.stale_set_prevented(key);
                tracing::debug!(
                    key = %self.log_key(key),
                    "refreshed value not cached: the key was written or invalidated while it loaded"
                );
            }
            Err(error) => self.degraded("set", key, &error),
        }
    }

    /// The loader failed on a key past its TTL: serve the value found if the key still holds
    /// it, unchanged (so never one an invalidation removed meanwhile), else the error.
    async fn serve_stale<T, E>(
        &self,
        key: &str,
        physical: &str,
        found: Found<T>,
        grace: Duration,
        error: E,
        budget: &Budget,
    ) -> Result<Fetched<T>, E>
    where
        T: DeserializeOwned,
    {
        if found.version == 0 || self.read_gate().is_err() {
            return Err(error);
        }
        let guard = self.guard();
        let again = guard.backend().get_versioned(physical);
        let Ok(Some(again)) = guard.call("get", Bound::Op, budget, again).await else {
            return Err(error);
        };
        if again.version == found.version && again.bytes == found.bytes {
            self.inner.counters.served_stale(key);
            tracing::debug!(key = %self.log_key(key), "loader failed; serving the value past its TTL (stale-if-error)");
            return Ok(Fetched::stale(found.value));
        }
        // Written since: another caller's refresh, served if it is fresh.
        let fresh = again.left.is_none_or(|left| left > grace);
        if fresh
            && !is_lease_marker(&again.bytes)
            && let Ok(value) = self.inner.format.decode::<T>(key, &again.bytes)
        {
            return Ok(Fetched::hit(value));
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_refreshes_more_often_as_expiry_nears() {
        let delta = Duration::from_millis(50);
        let share = |left_ms: u64| {
            let draws = 10_000;
            let hits = (1..=draws)
                .filter(|i| {
                    let rand = f64::from(*i) / f64::from(draws);
                    draws_refresh(delta, 1.0, Duration::from_millis(left_ms), rand)
                })
                .count();
            hits as f64 / f64::from(draws)
        };
        // P(refresh) = P(-ln(rand) >= left / delta) = exp(-left / delta).
        for left_ms in [5, 50, 100, 200] {
            let expected = (-(left_ms as f64) / 50.0).exp();
            assert!(
                (share(left_ms) - expected).abs() < 0.01,
                "{left_ms} ms left: {} vs {expected}",
                share(left_ms)
            );
        }
        assert!(draws_refresh(delta, 1.0, Duration::ZERO, 1.0));
        assert!(!draws_refresh(
            Duration::ZERO,
            1.0,
            Duration::from_millis(1),
            0.0
        ));
    }

    #[test]
    fn a_call_inherits_what_it_does_not_set() {
        let service = Freshness::new(Some(1.0), Some(Duration::from_secs(60)));
        let call = Freshness::new(Some(2.0), None);
        assert_eq!(
            call.over(service),
            Freshness::new(Some(2.0), Some(Duration::from_secs(60)))
        );
        assert!(Freshness::INHERIT.over(Freshness::INHERIT).is_off());
        assert!(!Freshness::new(None, Some(Duration::from_secs(1))).is_off());
    }
}
