//! [`CacheService`]: the handle every repository shares.

use crate::backend::{
    Backend, BackendKind, DisabledBackend, LEASE_MARKER_PREFIX, Lease, MemoryBackend, RedisBackend,
    ServerInfo, is_lease_marker,
};
use crate::breaker::{Breaker, BreakerState};
use crate::config::{CacheConfig, CacheServiceBuilder, Fallback, StoreConfig};
use crate::flight::{self, Flights, Leader, Role, Shared};
use crate::key::escape_glob;
use crate::stats::{CacheStats, Counters};
use crate::{CacheError, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The cache: a cheap-to-clone handle (an `Arc` inside), `Send + Sync`, shared by every
/// repository of a service.
///
/// The plain methods never fail: a backend fault (Redis down, slow, returning garbage) is
/// logged with `tracing`, counted in [`stats`](Self::stats), trips the circuit breaker, and
/// reads as a miss, so the caller goes to its loader. The `try_*` methods return the
/// [`CacheError`] instead, for callers who want to see it.
///
/// Keys are logical (`users:1`); the service stores them under `{prefix}:{key}`.
#[derive(Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    kind: BackendKind,
    /// Whether calls go through the timeout and the breaker (every backend but the embedded
    /// store and the disabled one, which cannot hang or fail).
    guarded: bool,
    endpoint: Option<String>,
    /// `{prefix}:`, prepended to every key.
    key_prefix: String,
    /// The prefix glob-escaped, then `:`, prepended to every pattern.
    pattern_prefix: String,
    default_ttl: Duration,
    timeout: Duration,
    admin_timeout: Duration,
    breaker: Breaker,
    fallback: Option<(MemoryBackend, Duration)>,
    counters: Counters,
    flights: Flights,
    single_flight: bool,
    leases: bool,
    lease_ttl: Duration,
}

/// A value with where it came from: what [`CacheService::get_or_load_with_status`] and the
/// `status` option of `#[cached]` return, for APIs that report `"cached": true/false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// `true` when this caller's loader did not run: the value was read from the cache, or
    /// handed over by a concurrent caller's load of the same key (single-flight). `false` when
    /// this caller's loader produced it.
    pub from_cache: bool,
}

impl<T> Fetched<T> {
    /// A value read from the cache.
    pub fn hit(value: T) -> Self {
        Self {
            value,
            from_cache: true,
        }
    }

    /// A value the loader produced.
    pub fn loaded(value: T) -> Self {
        Self {
            value,
            from_cache: false,
        }
    }

    /// Maps the value, keeping where it came from.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Fetched<U> {
        Fetched {
            value: f(self.value),
            from_cache: self.from_cache,
        }
    }
}

/// The state of a service's backend, from [`CacheService::health`]. `Serialize`, for a
/// `/health` endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The primary backend.
    pub backend: BackendKind,
    /// `host:port/db` of the Redis server, never with credentials.
    pub endpoint: Option<String>,
    /// Whether the round trip succeeded.
    pub connected: bool,
    /// The measured round trip (a `PING`), in microseconds, when it succeeded.
    pub latency_us: Option<u64>,
    /// The circuit breaker's state after the check.
    pub breaker: BreakerState,
    /// Why the check failed, if it did.
    pub error: Option<String>,
    /// Server facts (keys under the prefix, memory used, uptime) when connected to a server.
    pub server: Option<ServerInfo>,
}

impl Health {
    /// The round-trip latency as a `Duration`.
    pub fn latency(&self) -> Option<Duration> {
        self.latency_us.map(Duration::from_micros)
    }
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("backend", &self.inner.kind)
            .field("endpoint", &self.inner.endpoint)
            .field("prefix", &self.inner.key_prefix.trim_end_matches(':'))
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

impl CacheService {
    /// A builder for an explicitly configured service.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cachekit::CacheError> {
    /// let cache = cachekit::CacheService::builder()
    ///     .redis_url("redis://127.0.0.1:6379/0")
    ///     .prefix("myapp")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> CacheServiceBuilder {
        CacheServiceBuilder::default()
    }

    /// A service configured from the environment (see the crate docs for the variables). Never
    /// fails: an invalid configuration is logged and gives a service that caches nothing, and
    /// an unreachable Redis gives a degraded service that reconnects in the background.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let cache = cachekit::CacheService::from_env().await;
    /// # }
    /// ```
    pub async fn from_env() -> Self {
        match CacheConfig::from_env() {
            Ok(config) => match Self::from_config(config).await {
                Ok(service) => service,
                Err(error) => Self::invalid(&error),
            },
            Err(error) => Self::invalid(&error),
        }
    }

    fn invalid(error: &CacheError) -> Self {
        tracing::error!(%error, "cachekit: invalid configuration; caching is disabled");
        Self::assemble(CacheConfig::default(), Arc::new(DisabledBackend), None)
    }

    /// A service on the embedded in-process store (64 MiB, default TTL 300 s, prefix
    /// `cachekit`). Needs no server and no runtime to create.
    ///
    /// ```
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.stats().backend, cachekit::BackendKind::Memory);
    /// ```
    pub fn memory() -> Self {
        Self::assemble(
            CacheConfig::default(),
            Arc::new(MemoryBackend::default()),
            None,
        )
    }

    /// Builds a service from a configuration; see [`CacheServiceBuilder::build`].
    pub async fn from_config(config: CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        let (backend, endpoint): (Arc<dyn Backend>, _) = match &config.store {
            StoreConfig::Redis(redis) => {
                let endpoint = redis.endpoint();
                let backend = RedisBackend::connect_lazy(
                    redis.client()?,
                    endpoint.clone(),
                    config.timeout,
                    config.connect_timeout,
                )?;
                (Arc::new(backend), Some(endpoint))
            }
            StoreConfig::Memory { max_bytes } => (Arc::new(MemoryBackend::new(*max_bytes)), None),
            StoreConfig::Disabled => (Arc::new(DisabledBackend), None),
            StoreConfig::Custom(backend) => (backend.clone(), None),
        };
        let tls = matches!(&config.store, StoreConfig::Redis(r) if r.tls);
        let connect_timeout = config.connect_timeout;
        let service = Self::assemble(config, backend, endpoint);
        service.announce(tls);
        if service.inner.guarded {
            service.connect_or_degrade(connect_timeout).await;
        }
        Ok(service)
    }

    fn assemble(config: CacheConfig, backend: Arc<dyn Backend>, endpoint: Option<String>) -> Self {
        let kind = backend.kind();
        let fallback = match config.fallback {
            Fallback::Memory { ttl, max_bytes } => Some((MemoryBackend::new(max_bytes), ttl)),
            Fallback::Passthrough => None,
        };
        let inner = Inner {
            guarded: !matches!(kind, BackendKind::Memory | BackendKind::Disabled),
            kind,
            backend,
            endpoint,
            key_prefix: format!("{}:", config.prefix),
            pattern_prefix: format!("{}:", escape_glob(&config.prefix)),
            default_ttl: config.default_ttl,
            timeout: config.timeout,
            admin_timeout: config.admin_timeout,
            breaker: Breaker::new(config.breaker_threshold, config.breaker_open_for),
            fallback,
            counters: Counters::default(),
            flights: Flights::default(),
            single_flight: config.single_flight,
            leases: config.leases,
            lease_ttl: config.lease_ttl,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The one start-up line saying which backend is in use.
    fn announce(&self, tls: bool) {
        let inner = &self.inner;
        let prefix = inner.key_prefix.trim_end_matches(':');
        match (&inner.kind, &inner.endpoint) {
            (BackendKind::Redis, Some(endpoint)) => tracing::info!(
                backend = "redis",
                endpoint = %endpoint,
                tls,
                prefix,
                "cachekit: using Redis at {endpoint}"
            ),
            (kind, _) => {
                tracing::info!(backend = %kind, prefix, "cachekit: using the {kind} backend")
            }
        }
    }

    /// Makes the first connection; when it fails, opens the breaker and keeps trying in the
    /// background, so start-up never waits on an absent server for longer than one attempt.
    async fn connect_or_degrade(&self, connect_timeout: Duration) {
        let inner = &self.inner;
        let error = match tokio::time::timeout(connect_timeout, inner.backend.ping()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => CacheError::Timeout {
                op: "connect",
                timeout: connect_timeout,
            },
        };
        tracing::warn!(
            %error,
            endpoint = inner.endpoint.as_deref().unwrap_or(""),
            "cachekit: backend unreachable at start-up; running degraded and reconnecting in the background"
        );
        Counters::bump(&inner.counters.errors);
        inner.breaker.trip();
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(reconnect_in_background(weak));
    }

    fn physical_key(&self, key: &str) -> String {
        let prefix = &self.inner.key_prefix;
        let mut physical = String::with_capacity(prefix.len() + key.len());
        physical.push_str(prefix);
        physical.push_str(key);
        physical
    }

    fn physical_pattern(&self, pattern: &str) -> String {
        let mut physical = String::with_capacity(self.inner.pattern_prefix.len() + pattern.len());
        physical.push_str(&self.inner.pattern_prefix);
        physical.push_str(pattern);
        physical
    }

    /// Runs one backend call under the breaker and the timeout, and records its outcome.
    async fn guarded<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        let inner = &*self.inner;
        if !inner.guarded {
            return call.await;
        }
        if !inner.breaker.allow() {
            return Err(CacheError::CircuitOpen);
        }
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout { op, timeout }),
        };
        match &result {
            Ok(_) => {
                if inner.breaker.on_success() {
                    self.on_recovered();
                }
            }
            Err(e) if e.is_backend_fault() => {
                Counters::bump(&inner.counters.errors);
                inner.breaker.on_failure();
            }
            Err(_) => {}
        }
        result
    }

    fn on_recovered(&self) {
        if let Some((store, _)) = &self.inner.fallback {
            // Entries written during the outage may have missed other processes'
            // invalidations; Redis is authoritative again.
            store.clear();
        }
    }

    /// Logs and counts a call that could not use the backend.
    fn degraded(&self, op: &'static str, key: &str, error: &CacheError) {
        Counters::bump(&self.inner.counters.fallbacks);
        if error.is_circuit_open() {
            tracing::debug!(op, key, "cache backend skipped (circuit open)");
        } else {
            tracing::warn!(op, key, %error, "cache backend failed; falling back");
        }
    }

    // ----- reads -------------------------------------------------------------------------

    /// Reads `key`. A missing key, a value that does not decode into `T` (the entry is then
    /// deleted and a warning logged), and a backend failure all read as `None`.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("users:1", &"Ada", None).await;
    /// assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("Ada"));
    /// assert_eq!(cache.get::<u64>("users:1").await, None); // wrong type: a miss
    /// # });
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        match self.read(key).await {
            Ok(value) => value,
            Err(e) if e.is_decode() => None,
            Err(e) => {
                self.degraded("get", key, &e);
                self.fallback_get(key).await
            }
        }
    }

    /// Reads `key`, returning backend failures and undecodable values as errors (an
    /// undecodable entry is deleted first).
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_get::<u32>("nothing").await.unwrap(), None);
    /// # });
    /// ```
    pub async fn try_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        let result = self.read(key).await;
        if matches!(&result, Err(e) if !e.is_decode()) {
            Counters::bump(&self.inner.counters.misses);
        }
        result
    }

    /// A read from the primary backend. Counts hits and misses of the reads that reached it;
    /// a read that failed is counted by the caller, which may still find it in the fallback.
    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CacheError> {
        let physical = self.physical_key(key);
        let inner = &*self.inner;
        let bytes = self
            .guarded("get", inner.timeout, inner.backend.get(&physical))
            .await?;
        let decoded = self.decode(key, bytes);
        if decoded.is_err() {
            // Best effort: if the delete fails too, the next read finds the same bytes and
            // misses again, which is still correct.
            let _ = self
                .guarded("delete", inner.timeout, inner.backend.delete(&physical))
                .await;
        }
        decoded
    }

    /// Decodes what a store returned, counting the hit, the miss or the undecodable value.
    fn decode<T: DeserializeOwned>(
        &self,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<Option<T>, CacheError> {
        let counters = &self.inner.counters;
        let Some(bytes) = bytes.filter(|b| !is_lease_marker(b)) else {
            // Empty, or another caller's lease: that caller is loading it.
            Counters::bump(&counters.misses);
            return Ok(None);
        };
        match codec::decode(key, &bytes) {
            Ok(value) => {
                Counters::bump(&counters.hits);
                Ok(Some(value))
            }
            Err(error) => {
                Counters::bump(&counters.misses);
                Counters::bump(&counters.decode_errors);
                tracing::warn!(key, %error, "cached value did not decode into the requested type; removing it");
                Err(error)
            }
        }
    }

    /// A read that could not use the primary backend: the fallback store if there is one,
    /// else a miss.
    async fn fallback_get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let Some((store, _)) = &self.inner.fallback else {
            Counters::bump(&self.inner.counters.misses);
            return None;
        };
        let physical = self.physical_key(key);
        let bytes = store.get(&physical).await.ok().flatten();
        match self.decode(key, bytes) {
            Ok(value) => value,
            Err(_) => {
                let _ = store.delete(&physical).await;
                None
            }
        }
    }

    // ----- writes ------------------------------------------------------------------------

    /// Stores `value` under `key` for `ttl` (`None`: the default TTL). Returns whether the
    /// primary backend stored it; a failure is logged and counted, never returned.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// use std::time::Duration;
    /// let cache = cachekit::CacheService::memory();
    /// assert!(cache.set("users:1", &vec!["admin", "editor"], Some(Duration::from_secs(60))).await);
    /// # });
    /// ```
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> bool {
        match codec::encode(key, value) {
            Ok(bytes) => self.store(key, &bytes, ttl).await,
            Err(error) => {
                tracing::warn!(key, %error, "value not cached: it did not encode");
                false
            }
        }
    }

    /// Writes encoded bytes; on a backend failure, to the fallback store if there is one.
    async fn store(&self, key: &str, bytes: &[u8], ttl: Option<Duration>) -> bool {
        match self.try_store(key, bytes, ttl).await {
            Ok(()) => true,
            Err(e) => {
                if e.is_backend_fault() || e.is_circuit_open() {
                    self.degraded("set", key, &e);
                    self.store_fallback(key, bytes, ttl).await;
                } else {
                    tracing::warn!(key, error = %e, "value not cached");
                }
                false
            }
        }
    }

    async fn store_fallback(&self, key: &str, bytes: &[u8], ttl: Option<Duration>) {
        if let Some((store, fallback_ttl)) = &self.inner.fallback {
            let ttl = ttl.unwrap_or(self.inner.default_ttl).min(*fallback_ttl);
            let _ = store.set(&self.physical_key(key), bytes, ttl).await;
        }
    }

    async fn try_store(
        &self,
        key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let ttl = self.ttl(key, ttl)?;
        let physical = self.physical_key(key);
        self.guarded(
            "set",
            self.inner.timeout,
            self.inner.backend.set(&physical, bytes, ttl),
        )
        .await?;
        Counters::bump(&self.inner.counters.sets);
        Ok(())
    }

    fn ttl(&self, key: &str, ttl: Option<Duration>) -> Result<Duration, CacheError> {
        let ttl = ttl.unwrap_or(self.inner.default_ttl);
        if ttl.is_zero() {
            return Err(CacheError::Config(format!("zero TTL for key `{key}`")));
        }
        Ok(ttl)
    }

    /// Stores `value`, returning the error if it could not be encoded or stored. A zero
    /// `ttl` is a [`CacheError::Config`] error.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.try_set("k", &1, None).await.unwrap();
    /// assert!(cache.try_set("k", &1, Some(std::time::Duration::ZERO)).await.is_err());
    /// # });
    /// ```
    pub async fn try_set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let bytes = codec::encode(key, value)?;
        self.try_store(key, &bytes, ttl).await
    }

    /// Removes `key`; returns whether it existed. A failure is logged and counted, and reads
    /// as `false`.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("users:1", &1, None).await;
    /// assert!(cache.delete("users:1").await);
    /// assert!(!cache.delete("users:1").await);
    /// # });
    /// ```
    pub async fn delete(&self, key: &str) -> bool {
        match self.try_delete(key).await {
            Ok(existed) => existed,
            Err(e) => {
                self.degraded("delete", key, &e);
                false
            }
        }
    }

    /// Removes `key`, returning the error if the backend failed.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_delete("absent").await.unwrap(), false);
    /// # });
    /// ```
    pub async fn try_delete(&self, key: &str) -> Result<bool, CacheError> {
        let physical = self.physical_key(key);
        Counters::bump(&self.inner.counters.deletes);
        if let Some((store, _)) = &self.inner.fallback {
            let _ = store.delete(&physical).await;
        }
        self.guarded(
            "delete",
            self.inner.timeout,
            self.inner.backend.delete(&physical),
        )
        .await
    }

    /// Removes every key matching the Redis glob `pattern` (`*`, `?`, `[...]`, `\` escapes)
    /// inside this service's prefix; returns how many were removed. Keys outside the prefix are
    /// never touched. On Redis this walks the keyspace with `SCAN`, bounded by the admin
    /// timeout. A failure is logged and counted, and reads as `0`.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("users:1", &1, None).await;
    /// cache.set("users:2", &2, None).await;
    /// cache.set("roles:1", &3, None).await;
    /// assert_eq!(cache.invalidate_pattern("users:*").await, 2);
    /// # });
    /// ```
    pub async fn invalidate_pattern(&self, pattern: &str) -> u64 {
        match self.try_invalidate_pattern(pattern).await {
            Ok(removed) => removed,
            Err(e) => {
                self.degraded("invalidate_pattern", pattern, &e);
                0
            }
        }
    }

    /// Like [`invalidate_pattern`](Self::invalidate_pattern), returning the error.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_invalidate_pattern("users:*").await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn try_invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let physical = self.physical_pattern(pattern);
        Counters::bump(&self.inner.counters.invalidations);
        if let Some((store, _)) = &self.inner.fallback {
            let _ = store.delete_matching(&physical).await;
        }
        self.guarded(
            "invalidate_pattern",
            self.inner.admin_timeout,
            self.inner.backend.delete_matching(&physical),
        )
        .await
    }

    /// Removes every key under this service's prefix, and nothing else (never `FLUSHDB`);
    /// returns how many were removed.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("a", &1, None).await;
    /// assert_eq!(cache.clear_all().await, 1);
    /// # });
    /// ```
    pub async fn clear_all(&self) -> u64 {
        self.invalidate_pattern("*").await
    }

    /// Like [`clear_all`](Self::clear_all), returning the error.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_clear_all().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn try_clear_all(&self) -> Result<u64, CacheError> {
        self.try_invalidate_pattern("*").await
    }

    // ----- cache-aside ---------------------------------------------------------------------

    /// The cache-aside primitive: returns the cached value of `key` if there is one that
    /// decodes; otherwise awaits `load`, stores an `Ok` value for `ttl` (`None`: the default)
    /// and returns it. An `Err` from `load` is returned as is and never stored. Cache faults
    /// never surface: the loader's result is returned.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// let load = || async { Ok::<_, std::io::Error>(vec!["admin".to_string()]) };
    /// let roles = cache.get_or_load("user_roles:7", None, load).await.unwrap();
    /// assert_eq!(roles, ["admin"]);
    /// # });
    /// ```
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.load_through(key, ttl, |_| true, load())
            .await
            .map(|fetched| fetched.value)
    }

    /// [`get_or_load`](Self::get_or_load), also telling whether the value came from the cache.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// let load = || async { Ok::<_, std::io::Error>(42) };
    /// let first = cache.get_or_load_with_status("answer", None, load).await.unwrap();
    /// let second = cache.get_or_load_with_status("answer", None, load).await.unwrap();
    /// assert_eq!((first.value, first.from_cache), (42, false));
    /// assert_eq!((second.value, second.from_cache), (42, true));
    /// # });
    /// ```
    pub async fn get_or_load_with_status<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.load_through(key, ttl, |_| true, load()).await
    }

    /// The one load path every cache-aside call takes: read; on a miss, load once per key in
    /// this process (single-flight) and, under a lease, once per key across processes; store
    /// what `store_if` accepts unless the key was invalidated while loading.
    pub(crate) async fn load_through<T, E, Fut>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
    ) -> Result<Fetched<T>, E>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(value) = self.get::<T>(key).await {
            return Ok(Fetched::hit(value));
        }
        let inner = &*self.inner;
        let physical = self.physical_key(key);
        if !inner.single_flight {
            return self
                .load_leased(key, &physical, ttl, store_if, load, None)
                .await
                .map(|(f, _)| f);
        }
        match inner.flights.join(&physical) {
            Role::Leader(leader) => {
                // On `Err`, a panic or a cancellation the leader drops unfinished, and its
                // followers load for themselves.
                let (fetched, shared) = self
                    .load_leased(key, &physical, ttl, store_if, load, Some(&leader))
                    .await?;
                if let Some(bytes) = shared {
                    leader.finish(bytes);
                }
                Ok(fetched)
            }
            Role::Follower(slot) => {
                if let Some(bytes) = flight::wait(slot).await
                    && let Ok(value) = codec::decode::<T>(key, &bytes)
                {
                    Counters::bump(&inner.counters.coalesced);
                    return Ok(Fetched::hit(value));
                }
                self.load_leased(key, &physical, ttl, store_if, load, None)
                    .await
                    .map(|(f, _)| f)
            }
        }
    }

    /// Loads under a lease (when leases are on): takes it, or waits for its holder's value, or
    /// gives up waiting after the lease TTL; then loads, and fills the key only if the lease
    /// survived. Also returns the encoded value, for single-flight followers.
    async fn load_leased<T, E, Fut>(
        &self,
        key: &str,
        physical: &str,
        ttl: Option<Duration>,
        store_if: impl FnOnce(&T) -> bool,
        load: Fut,
        flight: Option<&Leader<'_>>,
    ) -> Result<(Fetched<T>, Option<Shared>), E>
    where
        T: Serialize + DeserializeOwned,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        let lease = if inner.leases {
            match self.take_lease::<T>(key, physical).await {
                Ok(lease) => lease,
                Err(hit) => return Ok(hit),
            }
        } else {
            LeaseState::Off
        };

        let value = match load.await {
            Ok(value) => value,
            Err(error) => {
                // Give the lease back before returning, so the next caller finds the key empty.
                // (On a panic or a cancellation the guard gives it back in the background.)
                if let LeaseState::Ours(mut guard) = lease {
                    self.release(physical, &guard.marker).await;
                    guard.disarm();
                }
                return Err(error);
            }
        };
        let bytes = match codec::encode(key, &value) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(key, %error, "loaded value not cached: it did not encode");
                return Ok((Fetched::loaded(value), None));
            }
        };
        let store = store_if(&value);
        if let Some(flight) = flight {
            flight.close();
        }
        // Whether the value is known not to predate an invalidation: only then is it handed to
        // single-flight followers, who may have arrived after that invalidation.
        let fresh = match lease {
            LeaseState::Ours(mut guard) => {
                let fresh = if store {
                    self.fill(key, physical, &guard.marker, &bytes, ttl).await
                } else {
                    self.release(physical, &guard.marker).await
                };
                guard.disarm();
                fresh
            }
            LeaseState::Off | LeaseState::Unavailable => {
                if store {
                    self.store(key, &bytes, ttl).await;
                }
                true
            }
            // Someone else held the lease for its whole TTL: do not overwrite what they write,
            // and, unable to prove this value fresh, do not hand it on.
            LeaseState::GaveUp => false,
        };
        Ok((Fetched::loaded(value), fresh.then(|| Shared::from(bytes))))
    }

    /// Takes the lease on a missing key, or waits for the holder's value (returned as `Err`,
    /// the early exit), or gives up after the lease TTL.
    async fn take_lease<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        physical: &str,
    ) -> Result<LeaseState, (Fetched<T>, Option<Shared>)> {
        let inner = &*self.inner;
        let marker = new_marker();
        let deadline = tokio::time::Instant::now() + inner.lease_ttl;
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = inner.backend.try_lease(physical, &marker, inner.lease_ttl);
            match self.guarded("lease", inner.timeout, attempt).await {
                Ok(Lease::Acquired) => {
                    return Ok(LeaseState::Ours(LeaseGuard::new(
                        self,
                        physical.to_owned(),
                        marker,
                    )));
                }
                Ok(Lease::Value(bytes)) => match self.decode::<T>(key, Some(bytes)) {
                    // Not handed to followers: one may have arrived after an invalidation
                    // that followed this read. They read the store themselves.
                    Ok(Some(value)) => return Err((Fetched::hit(value), None)),
                    // Undecodable (already counted and logged): remove it, then try again.
                    _ => {
                        let delete = inner.backend.delete(physical);
                        let _ = self.guarded("delete", inner.timeout, delete).await;
                    }
                },
                Ok(Lease::Held) => {}
                Err(e) => {
                    self.degraded("lease", key, &e);
                    return Ok(LeaseState::Unavailable);
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::debug!(key, "gave up waiting for another loader's lease");
                return Ok(LeaseState::GaveUp);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Writes a loaded value under the lease `marker`: refused if the key was invalidated
    /// since the lease was taken. Returns whether it was written.
    async fn fill(
        &self,
        key: &str,
        physical: &str,
        marker: &[u8],
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> bool {
        let inner = &*self.inner;
        let ttl = match self.ttl(key, ttl) {
            Ok(ttl) => ttl,
            Err(error) => {
                tracing::warn!(key, %error, "value not cached");
                return self.release(physical, marker).await;
            }
        };
        let fill = inner.backend.fill(physical, marker, bytes, ttl);
        match self.guarded("fill", inner.timeout, fill).await {
            Ok(true) => {
                Counters::bump(&inner.counters.sets);
                true
            }
            Ok(false) => {
                Counters::bump(&inner.counters.stale_sets_prevented);
                tracing::debug!(
                    key,
                    "loaded value not cached: the key was invalidated while it loaded"
                );
                false
            }
            Err(e) => {
                self.degraded("set", key, &e);
                self.store_fallback(key, bytes, Some(ttl)).await;
                false
            }
        }
    }

    /// Gives a lease back; returns whether it was still held (no invalidation meanwhile).
    async fn release(&self, physical: &str, marker: &[u8]) -> bool {
        let inner = &*self.inner;
        let release = inner.backend.release(physical, marker);
        matches!(
            self.guarded("release", inner.timeout, release).await,
            Ok(true)
        )
    }

    // ----- introspection -------------------------------------------------------------------

    /// A snapshot of the counters, the backend kind and the breaker state.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// let _: Option<u8> = cache.get("absent").await;
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses), (0, 1));
    /// # });
    /// ```
    pub fn stats(&self) -> CacheStats {
        self.inner
            .counters
            .snapshot(self.inner.kind, self.inner.breaker.state())
    }

    /// Measures a real round trip to the backend (bypassing the breaker, and closing it when
    /// the backend answers) and, for a server, reports its facts: keys under the prefix
    /// (counted with a bounded `SCAN`), memory used, uptime.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let health = cachekit::CacheService::memory().health().await;
    /// assert!(health.connected);
    /// # });
    /// ```
    pub async fn health(&self) -> Health {
        let inner = &*self.inner;
        let started = Instant::now();
        let ping = tokio::time::timeout(inner.timeout, inner.backend.ping()).await;
        let latency = started.elapsed();
        let error = match ping {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(CacheError::Timeout {
                op: "ping",
                timeout: inner.timeout,
            }),
        };
        let connected = error.is_none();
        let mut server = None;
        let error = match error {
            Some(e) => Some(e),
            None => {
                if inner.breaker.on_success() {
                    self.on_recovered();
                }
                let prefix_pattern = self.physical_pattern("*");
                let info = inner.backend.server_info(&prefix_pattern);
                match tokio::time::timeout(inner.admin_timeout, info).await {
                    Ok(Ok(info)) => {
                        server = info;
                        None
                    }
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(CacheError::Timeout {
                        op: "info",
                        timeout: inner.admin_timeout,
                    }),
                }
            }
        };
        Health {
            backend: inner.kind,
            endpoint: inner.endpoint.clone(),
            connected,
            latency_us: connected.then(|| u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            breaker: inner.breaker.state(),
            error: error.map(|e| e.to_string()),
            server,
        }
    }

    /// The key prefix (without the trailing `:`).
    ///
    /// ```
    /// assert_eq!(cachekit::CacheService::memory().prefix(), cachekit::DEFAULT_PREFIX);
    /// ```
    pub fn prefix(&self) -> &str {
        self.inner.key_prefix.trim_end_matches(':')
    }

    /// The TTL used when a call gives none.
    ///
    /// ```
    /// assert_eq!(cachekit::CacheService::memory().default_ttl(), cachekit::DEFAULT_TTL);
    /// ```
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }
}

/// Where a loader stands with respect to the key's lease.
enum LeaseState {
    /// Leases are off.
    Off,
    /// This caller holds the lease.
    Ours(LeaseGuard),
    /// The store could not be asked.
    Unavailable,
    /// Another caller held the lease for longer than this one would wait.
    GaveUp,
}

/// A held lease. Dropped without [`disarm`](Self::disarm) (the loader failed, panicked or was
/// cancelled), it gives the lease back in the background so waiters need not sit out its TTL.
struct LeaseGuard {
    service: Option<CacheService>,
    physical: String,
    marker: Vec<u8>,
}

impl LeaseGuard {
    fn new(service: &CacheService, physical: String, marker: Vec<u8>) -> Self {
        Self {
            service: Some(service.clone()),
            physical,
            marker,
        }
    }

    fn disarm(&mut self) {
        self.service = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(service) = self.service.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires by its TTL
        };
        let physical = std::mem::take(&mut self.physical);
        let marker = std::mem::take(&mut self.marker);
        runtime.spawn(async move {
            let inner = &*service.inner;
            let release = inner.backend.release(&physical, &marker);
            let _ = service.guarded("release", inner.timeout, release).await;
        });
    }
}

/// A lease marker unique to this call: the marker prefix, a per-process random number, the
/// process id and a counter.
fn new_marker() -> Vec<u8> {
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

/// Pings an unreachable backend every breaker cool-down until it answers, then closes the
/// breaker. Holds only a weak reference: it ends when the service is dropped.
async fn reconnect_in_background(service: Weak<Inner>) {
    loop {
        let Some(wait) = service.upgrade().map(|inner| inner.breaker.open_for()) else {
            return;
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = service.upgrade() else {
            return;
        };
        if inner.breaker.state() == BreakerState::Closed {
            return;
        }
        let ping = tokio::time::timeout(inner.timeout, inner.backend.ping()).await;
        if matches!(ping, Ok(Ok(()))) {
            if inner.breaker.on_success()
                && let Some((store, _)) = &inner.fallback
            {
                store.clear();
            }
            tracing::info!(
                endpoint = inner.endpoint.as_deref().unwrap_or(""),
                "cachekit: backend reachable again"
            );
            return;
        }
    }
}

/// Gives a repository's methods their cache: what `#[cached]` and `#[invalidates]` use on
/// methods taking `&self`.
///
/// ```
/// struct UserRepo { cache: cachekit::CacheService }
/// impl cachekit::HasCache for UserRepo {
///     fn cache(&self) -> &cachekit::CacheService { &self.cache }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `cachekit::HasCache`",
    note = "implement `HasCache` for `{Self}` to name its cache, or give the attribute `cache = ...`"
)]
pub trait HasCache {
    /// The service this value's methods cache through.
    fn cache(&self) -> &CacheService;
}

impl HasCache for CacheService {
    fn cache(&self) -> &CacheService {
        self
    }
}

static GLOBAL: OnceLock<CacheService> = OnceLock::new();

/// Sets the process-wide service that `#[cached]` and `#[invalidates]` use on free functions
/// without a `cache = ...` option. It can be set once; a second call returns the service it was
/// given back as `Err`. Until it is set, such functions run uncached (and say so once in the
/// log).
///
/// ```
/// let _ = cachekit::set_global(cachekit::CacheService::memory());
/// assert!(cachekit::global().is_some());
/// ```
pub fn set_global(service: CacheService) -> Result<(), CacheService> {
    GLOBAL.set(service)
}

/// The process-wide service set with [`set_global`], if any.
///
/// ```
/// if let Some(cache) = cachekit::global() {
///     println!("caching free functions with prefix {}", cache.prefix());
/// }
/// ```
pub fn global() -> Option<&'static CacheService> {
    GLOBAL.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

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
