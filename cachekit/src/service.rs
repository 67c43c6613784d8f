//! [`CacheService`]: the handle every repository shares. A facade: construction, the public
//! methods, statistics and health. The cache-aside state machine lives in `load`, removal in
//! `invalidate`, the timeout and breaker in `guard`.

use crate::CacheError;
use crate::backend::redis::RedisOptions;
use crate::backend::{
    Backend, BackendKind, DisabledBackend, MemoryBackend, RedisBackend, ServerInfo,
};
use crate::breaker::{Breaker, BreakerState};
use crate::coalesce::Reads;
use crate::codec::Format;
use crate::config::{CacheConfig, CacheServiceBuilder, Fallback, StoreConfig};
use crate::flight::Flights;
use crate::fresh::{Freshness, LoadTimes};
use crate::guard::{Bound, Budget, Guard};
use crate::invalidate::{Deferred, Removal};
use crate::key::{LogKey, escape_glob};
use crate::lease::Beat;
use crate::stats::{CacheStats, Counters};
use crate::tier::Tier;
use crate::tier::tracking::{Channel, Nodes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The cache: a cheap-to-clone handle (an `Arc` inside), `Send + Sync`, shared by every
/// repository of a service.
///
/// The plain methods never fail: a backend fault (Redis down, slow, returning garbage) is
/// logged with `tracing`, counted in [`stats`](Self::stats), and reads as a miss, so the caller
/// goes to its loader. Only faults that say the server is unreachable or too slow trip the
/// circuit breaker. The `try_*` methods return the [`CacheError`] instead, for callers who want
/// to see it.
///
/// Keys are logical (`users:1`); the service stores them under `{prefix}:{key}`.
#[derive(Clone)]
pub struct CacheService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) guard: Arc<Guard>,
    pub(crate) kind: BackendKind,
    endpoint: Option<String>,
    /// Whether the store is reached over TLS, for the hint of a connection that times out.
    tls: bool,
    /// `{prefix}:`, prepended to every key.
    key_prefix: String,
    /// The prefix glob-escaped, then `:`, prepended to every pattern.
    pattern_prefix: String,
    pub(crate) default_ttl: Duration,
    pub(crate) fallback: Option<(MemoryBackend, Duration)>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) flights: Flights,
    pub(crate) single_flight: bool,
    pub(crate) leases: bool,
    /// The longest a caller waits for another's loader before loading for itself.
    pub(crate) lease_ttl: Duration,
    /// Refresh-ahead and stale-if-error for every cache-aside call that does not set its own.
    pub(crate) fresh: Freshness,
    /// Whether the store reports TTLs and versions ([`Backend::get_versioned`]): without them,
    /// refresh-ahead and grace periods are off.
    pub(crate) versioned: bool,
    /// Recent load times, which refresh-ahead draws against.
    pub(crate) load_times: LoadTimes,
    /// The marker's TTL in the store and its renewal period.
    pub(crate) beat: Beat,
    pub(crate) deferred: Deferred,
    /// The codec, compression and largest value of what is written and read.
    pub(crate) format: Format,
    redact_keys: bool,
    /// The in-process tier, when it is on.
    pub(crate) tier: Option<Arc<Tier>>,
    /// The reads from the store in flight, which concurrent readers of a key share.
    pub(crate) reads: Reads,
    /// The built-in Redis backend (the guard's too), for the read path to call without a
    /// boxed future.
    pub(crate) redis: Option<RedisBackend>,
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
    /// `true` when the value is past its TTL, served because the loader failed and the key
    /// has a grace period (stale-if-error, see
    /// [`CacheServiceBuilder::stale_if_error`](crate::CacheServiceBuilder::stale_if_error)).
    /// Such a value was never invalidated: only expired.
    pub stale: bool,
}

impl<T> Fetched<T> {
    /// A value read from the cache.
    pub fn hit(value: T) -> Self {
        Self {
            value,
            from_cache: true,
            stale: false,
        }
    }

    /// A value the loader produced.
    pub fn loaded(value: T) -> Self {
        Self {
            value,
            from_cache: false,
            stale: false,
        }
    }

    /// A value read from the cache past its TTL, served because the loader failed.
    pub fn stale(value: T) -> Self {
        Self {
            value,
            from_cache: true,
            stale: true,
        }
    }

    /// Maps the value, keeping where it came from.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Fetched<U> {
        Fetched {
            value: f(self.value),
            from_cache: self.from_cache,
            stale: self.stale,
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
            .field("prefix", &self.prefix())
            .field("breaker", &self.inner.guard.breaker_state())
            .finish_non_exhaustive()
    }
}

impl CacheServiceBuilder {
    /// Validates the configuration and builds the service. Fails only for invalid
    /// configuration: an unreachable Redis still builds, degraded, and is reconnected in the
    /// background.
    pub async fn build(self) -> Result<CacheService, CacheError> {
        CacheService::from_config(self.into_config()?).await
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
        tracing::error!(error = %error.detail(), "cachekit: invalid configuration; caching is disabled");
        Self::assemble(
            CacheConfig::default(),
            Arc::new(DisabledBackend),
            None,
            None,
            None,
        )
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
            None,
            None,
        )
    }

    /// Builds a service from a configuration; see [`CacheServiceBuilder::build`].
    pub async fn from_config(config: CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        if let Some(warning) = config.prefix_warning() {
            tracing::warn!(prefix = %config.prefix, "cachekit: {warning}");
        }
        let mut direct = None;
        let options = RedisOptions {
            connect_timeout: config.connect_timeout,
            max_value_bytes: config.max_value_bytes,
            indexed: !config.unindexed,
            step_timeout: config.admin_timeout,
            batch_timeout: (!config.unbatched).then_some(config.timeout),
        };
        let (backend, endpoint): (Arc<dyn Backend>, _) = match &config.store {
            StoreConfig::Redis(redis) => {
                let endpoint = redis.endpoint();
                let backend =
                    RedisBackend::connect_lazy(redis.client()?, endpoint.clone(), &options)?;
                direct = Some(backend.clone());
                (Arc::new(backend), Some(endpoint))
            }
            StoreConfig::RedisCluster(cluster) => {
                let endpoint = cluster.endpoint();
                // No answer is awaited longer than the longest bound of any call.
                let response_timeout = config.timeout.max(config.admin_timeout);
                let client = cluster.client(config.connect_timeout, response_timeout)?;
                let backend = RedisBackend::cluster_lazy(client, endpoint.clone(), &options);
                direct = Some(backend.clone());
                (Arc::new(backend), Some(endpoint))
            }
            StoreConfig::Memory { max_bytes } => (Arc::new(MemoryBackend::new(*max_bytes)), None),
            StoreConfig::Disabled => (Arc::new(DisabledBackend), None),
            StoreConfig::Custom(backend) => (backend.clone(), None),
        };
        let channel = match (&config.store, config.local_ttl, &direct) {
            (StoreConfig::Redis(redis), Some(_), _) => Some(Channel {
                nodes: Nodes::One(redis.tracking_client()?),
                key_prefix: format!("{}:", config.prefix),
                connect_timeout: config.connect_timeout,
                timeout: config.timeout,
            }),
            (StoreConfig::RedisCluster(cluster), Some(_), Some(backend)) => Some(Channel {
                nodes: Nodes::Cluster {
                    conn: backend.conn().clone(),
                    template: cluster.tracking_template(),
                },
                key_prefix: format!("{}:", config.prefix),
                connect_timeout: config.connect_timeout,
                timeout: config.timeout,
            }),
            _ => None,
        };
        let remote = endpoint.is_some() || matches!(config.store, StoreConfig::Custom(_));
        let connect_timeout = config.connect_timeout;
        let service = Self::assemble(config, backend, endpoint, channel, direct);
        service.announce();
        if remote {
            service.connect_or_degrade(connect_timeout).await;
        }
        Ok(service)
    }

    /// Puts a service together. `channel`: the invalidation channel of a Redis store's
    /// in-process tier, started here (the tier serves once it is up). `direct`: `backend`
    /// itself when it is the built-in Redis backend, for the read path.
    fn assemble(
        config: CacheConfig,
        backend: Arc<dyn Backend>,
        endpoint: Option<String>,
        channel: Option<Channel>,
        direct: Option<RedisBackend>,
    ) -> Self {
        let kind = backend.kind();
        let key_prefix = format!("{}:", config.prefix);
        // The embedded store has no other writer than this service, which evicts what it
        // writes: its tier is vouched for from the start. A Redis store's, once its channel is.
        let tier = match (config.local_ttl, kind, &channel) {
            (Some(_), BackendKind::Memory, None) => Some(true),
            (Some(_), BackendKind::Redis, Some(_)) => Some(false),
            _ => None,
        }
        .map(|vouched| {
            let ttl = config.local_ttl.unwrap_or_default();
            Arc::new(Tier::new(&key_prefix, ttl, config.local_max_bytes, vouched))
        });
        let counters = Arc::new(Counters::new(config.metrics));
        if let (Some(tier), Some(channel)) = (&tier, channel) {
            tokio::spawn(channel.run(Arc::downgrade(tier), counters.clone()));
        }
        let fallback = match config.fallback {
            Fallback::Memory { ttl, max_bytes } => Some((MemoryBackend::new(max_bytes), ttl)),
            Fallback::Passthrough => None,
        };
        let guard = Guard::new(
            backend,
            config.timeout,
            config.admin_timeout,
            Breaker::new(config.breaker_threshold, config.breaker_open_for),
            counters.clone(),
            fallback.as_ref().map(|(store, _)| store.clone()),
        );
        let guard = if config.unguarded {
            guard.bypassed()
        } else {
            guard
        };
        // Only stores that report TTLs and versions can tell a value near or past its TTL.
        let versioned = matches!(kind, BackendKind::Redis | BackendKind::Memory);
        let inner = Inner {
            guard: Arc::new(guard),
            kind,
            endpoint,
            key_prefix,
            pattern_prefix: format!("{}:", escape_glob(&config.prefix)),
            default_ttl: config.default_ttl,
            fallback,
            counters,
            flights: Flights::default(),
            single_flight: config.single_flight,
            leases: config.leases,
            lease_ttl: config.lease_ttl,
            fresh: if versioned {
                Freshness::new(config.refresh_ahead, config.stale_if_error)
            } else {
                Freshness::INHERIT
            },
            versioned,
            load_times: LoadTimes::default(),
            beat: Beat::for_timeout(config.timeout),
            deferred: Deferred::default(),
            format: Format {
                codec: config.codec,
                compress_above: config.compress_above,
                max_value_bytes: config.max_value_bytes,
            },
            redact_keys: config.redact_keys,
            tls: match &config.store {
                StoreConfig::Redis(redis) => redis.tls,
                StoreConfig::RedisCluster(cluster) => cluster.tls(),
                _ => false,
            },
            tier,
            reads: Reads::default(),
            redis: direct,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The one start-up line saying which backend is in use.
    fn announce(&self) {
        let inner = &self.inner;
        let tls = inner.tls;
        let prefix = self.prefix();
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
        let backend = inner.guard.backend();
        let error = match tokio::time::timeout(connect_timeout, backend.ping()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => CacheError::Timeout {
                op: "connect",
                timeout: connect_timeout,
            },
        };
        let described = match self.hint(&error) {
            "" => error.detail().to_string(),
            hint => format!("{} ({hint})", error.detail()),
        };
        tracing::warn!(
            error = %described,
            endpoint = inner.endpoint.as_deref().unwrap_or(""),
            "cachekit: backend unreachable at start-up; running degraded and reconnecting in the background"
        );
        if let Some(kind) = error.fault_kind() {
            inner.counters.fault(kind);
        }
        inner.guard.trip(&error);
        tokio::spawn(Guard::reconnect_in_background(
            Arc::downgrade(&inner.guard),
            inner.endpoint.clone(),
        ));
    }

    /// What a connection error may mean beyond its own words, or `""`: a TLS client whose
    /// handshake a plain-text server leaves unanswered sees only a timeout.
    fn hint(&self, error: &CacheError) -> &'static str {
        if self.inner.tls && matches!(error, CacheError::Timeout { .. }) {
            "no answer over TLS: check that the server speaks TLS on this port"
        } else {
            ""
        }
    }

    pub(crate) fn guard(&self) -> &Guard {
        &self.inner.guard
    }

    pub(crate) fn physical_key(&self, key: &str) -> String {
        let prefix = &self.inner.key_prefix;
        let mut physical = String::with_capacity(prefix.len() + key.len());
        physical.push_str(prefix);
        physical.push_str(key);
        physical
    }

    /// [`physical_key`](Self::physical_key) as an `Arc<str>`, in one allocation for keys of
    /// usual length (the read path shares it with the flight of its read).
    pub(crate) fn physical_key_shared(&self, key: &str) -> Arc<str> {
        const STACK: usize = 256;
        let (prefix, key_bytes) = (self.inner.key_prefix.as_bytes(), key.as_bytes());
        let len = prefix.len() + key_bytes.len();
        if len <= STACK {
            let mut buffer = [0u8; STACK];
            buffer[..prefix.len()].copy_from_slice(prefix);
            buffer[prefix.len()..len].copy_from_slice(key_bytes);
            // Two `str`s one after the other are UTF-8: the error arm is never taken.
            if let Ok(joined) = std::str::from_utf8(&buffer[..len]) {
                return Arc::from(joined);
            }
        }
        Arc::from(self.physical_key(key))
    }

    pub(crate) fn physical_pattern(&self, pattern: &str) -> String {
        let mut physical = String::with_capacity(self.inner.pattern_prefix.len() + pattern.len());
        physical.push_str(&self.inner.pattern_prefix);
        physical.push_str(pattern);
        physical
    }

    /// `key` as log lines show it: whole, or with its parameter part hidden.
    pub(crate) fn log_key<'a>(&self, key: &'a str) -> LogKey<'a> {
        LogKey::new(key, self.inner.redact_keys)
    }

    /// Logs and counts a call that could not use the backend.
    pub(crate) fn degraded(&self, op: &'static str, key: &str, error: &CacheError) {
        Counters::bump(&self.inner.counters.fallbacks);
        let key = self.log_key(key);
        match error.fault_kind() {
            None => tracing::debug!(op, %key, error = %error.detail(), "cache backend skipped"),
            Some(kind) if kind.is_transport() => {
                tracing::warn!(op, %key, error = %error.detail(), "cache backend unavailable; falling back")
            }
            Some(kind) => {
                tracing::warn!(op, %key, fault = %kind, error = %error.detail(), "cache backend refused the operation; falling back")
            }
        }
    }

    // ----- reads -------------------------------------------------------------------------

    /// Reads `key`. A missing key, a value that does not decode into `T` (the entry is then
    /// removed, unless it changed meanwhile, and a warning logged), and a backend failure all
    /// read as `None`.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// cache.set("users:1", &"Ada", None).await;
    /// assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("Ada"));
    /// assert_eq!(cache.get::<u64>("users:1").await, None); // wrong type: a miss
    /// # });
    /// ```
    #[tracing::instrument(
        level = "debug",
        name = "cachekit.get",
        skip_all,
        fields(
            namespace = crate::metrics::namespace_of(key),
            key = %self.log_key(key),
            hit = tracing::field::Empty,
            tier = tracing::field::Empty,
        )
    )]
    pub async fn get<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Option<T> {
        let value = self.get_within(key, true, &Budget::default()).await;
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("hit", value.is_some());
        }
        value
    }

    /// [`get`](Self::get) as one step of a larger call.
    pub(crate) async fn get_within<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        local: bool,
        budget: &Budget,
    ) -> Option<T> {
        match self.read(key, local, budget).await {
            Ok(value) => value,
            Err(e) if e.is_decode() => None,
            Err(e) => {
                self.degraded("get", key, &e);
                self.fallback_get(key).await
            }
        }
    }

    /// Reads `key`, returning backend failures and undecodable values as errors (an
    /// undecodable entry is removed first).
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_get::<u32>("nothing").await.unwrap(), None);
    /// # });
    /// ```
    pub async fn try_get<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CacheError> {
        let result = self.read(key, true, &Budget::default()).await;
        if matches!(&result, Err(e) if !e.is_decode()) {
            self.inner.counters.miss(key);
        }
        result
    }

    // ----- writes ------------------------------------------------------------------------

    /// Stores `value` under `key` for `ttl` (`None`: the default TTL). Returns whether the
    /// primary backend stored it; a failure is logged and counted, never returned. A value
    /// whose encoding exceeds the maximum value size is not stored.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// use std::time::Duration;
    /// let cache = cachekit::CacheService::memory();
    /// assert!(cache.set("users:1", &vec!["admin", "editor"], Some(Duration::from_secs(60))).await);
    /// # });
    /// ```
    #[tracing::instrument(
        level = "debug",
        name = "cachekit.set",
        skip_all,
        fields(namespace = crate::metrics::namespace_of(key), key = %self.log_key(key))
    )]
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> bool {
        match self.encode(key, value) {
            Ok(bytes) => {
                self.store(key, &bytes, self.set_ttl(ttl), &Budget::default())
                    .await
            }
            Err(error) => {
                tracing::warn!(key = %self.log_key(key), error = %error.detail(), "value not cached");
                false
            }
        }
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
        let bytes = self.encode(key, value)?;
        self.try_store(key, &bytes, self.set_ttl(ttl), &Budget::default())
            .await
    }

    /// Removes `key`; returns whether it existed. A failure is logged and counted, and reads
    /// as `false`; if the backend could not be reached, the removal is remembered and applied
    /// before the backend serves another read.
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

    /// Removes `key`, returning the error if the backend failed. A removal that could not
    /// reach the backend is still remembered and applied before it serves another read.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.try_delete("absent").await.unwrap(), false);
    /// # });
    /// ```
    #[tracing::instrument(
        level = "debug",
        name = "cachekit.delete",
        skip_all,
        fields(
            namespace = crate::metrics::namespace_of(key),
            key = %self.log_key(key),
            removed = tracing::field::Empty,
        )
    )]
    pub async fn try_delete(&self, key: &str) -> Result<bool, CacheError> {
        let physical = self.physical_key(key);
        Counters::bump(&self.inner.counters.deletes);
        let removed = self.remove(Removal::Key(&physical)).await?;
        self.inner.counters.invalidated(key, removed);
        tracing::Span::current().record("removed", removed);
        Ok(removed > 0)
    }

    /// Removes every key matching the Redis glob `pattern` (`*`, `?`, `[...]`, `\` escapes)
    /// inside this service's prefix; returns how many were removed. Keys outside the prefix are
    /// never touched. Bounded by the admin timeout. A failure is logged and counted, and reads
    /// as `0`; if the backend could not be reached, the removal is remembered and applied
    /// before it serves another read.
    ///
    /// A pattern that starts with a namespace (`users:*`, `users:1*`), and `*`, are answered by
    /// the invalidation index, at a cost that follows the entries of that namespace rather than
    /// the size of Redis; a pattern without a glob removes one key; any other pattern (`*:7`)
    /// walks the keyspace with `SCAN`. See the crate docs, "Pattern invalidation".
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
    #[tracing::instrument(
        level = "debug",
        name = "cachekit.invalidate",
        skip_all,
        fields(
            namespace = crate::metrics::namespace_of(pattern),
            pattern = %self.log_key(pattern),
            removed = tracing::field::Empty,
        )
    )]
    pub async fn try_invalidate_pattern(&self, pattern: &str) -> Result<u64, CacheError> {
        let physical = self.physical_pattern(pattern);
        Counters::bump(&self.inner.counters.invalidations);
        let removed = self.remove(Removal::Pattern(&physical)).await?;
        self.inner.counters.invalidated(pattern, removed);
        tracing::Span::current().record("removed", removed);
        Ok(removed)
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
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.load_through(key, ttl, true, Freshness::INHERIT, |_| true, load())
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
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.load_through(key, ttl, true, Freshness::INHERIT, |_| true, load())
            .await
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
        let mut stats = self
            .inner
            .counters
            .snapshot(self.inner.kind, self.inner.guard.breaker_state());
        if let Some(redis) = &self.inner.redis {
            stats.reads_batched = redis.reads_batched();
        }
        stats
    }

    /// Measures a real round trip to the backend and, for a server, reports its facts (version,
    /// memory, clients, keys in its database). Bypasses the breaker and never changes its
    /// state; its cost on the server does not grow with the keyspace (`PING`, `INFO`,
    /// `DBSIZE`).
    ///
    /// When the ping times out while connections have been failing (refused, cut, or a TLS
    /// handshake rejected), [`Health::error`] names the last of those failures too, until the
    /// backend answers again: a timeout alone does not say why.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let health = cachekit::CacheService::memory().health().await;
    /// assert!(health.connected);
    /// # });
    /// ```
    pub async fn health(&self) -> Health {
        let inner = &*self.inner;
        let backend = inner.guard.backend();
        let timeout = inner.guard.timeout();
        let started = Instant::now();
        let ping = tokio::time::timeout(timeout, backend.ping()).await;
        let latency = started.elapsed();
        let timed_out = |op| CacheError::Timeout { op, timeout };
        let mut error = match ping {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(timed_out("ping")),
        };
        // A ping that times out while a connection is being retried says nothing of why; the
        // retry's last failure (a refused connection, an untrusted certificate) does.
        let cause = match &error {
            Some(CacheError::Timeout { .. }) => inner.guard.last_connection_failure(),
            _ => None,
        };
        let connected = error.is_none();
        let mut server = None;
        if connected {
            let everything = self.physical_pattern("*");
            let info = backend.server_info(&everything);
            match tokio::time::timeout(timeout, info).await {
                Ok(Ok(info)) => server = info,
                Ok(Err(e)) => error = Some(e),
                Err(_) => error = Some(timed_out("info")),
            }
        }
        Health {
            backend: inner.kind,
            endpoint: inner.endpoint.clone(),
            connected,
            latency_us: connected.then(|| u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
            breaker: inner.guard.breaker_state(),
            error: error.map(|e| match (cause, self.hint(&e)) {
                (Some(cause), _) => format!("{e}; the last connection attempt failed: {cause}"),
                (None, "") => e.to_string(),
                (None, hint) => format!("{e} ({hint})"),
            }),
            server,
        }
    }

    /// Files every entry under this service's prefix in the invalidation index, walking the
    /// keyspace once with `SCAN`, and marks the index complete so that pattern invalidations
    /// use it; returns how many entries were not filed before. Bounded by the admin timeout.
    ///
    /// A Redis index answers patterns only once it is complete. The first pattern
    /// invalidation a process makes starts this in the background by itself when the index is
    /// not (one process at a time; 12 s for a million keys in one run of the comparison
    /// runner), and invalidations walk the keyspace until it has finished,
    /// so calling it is never needed for correctness. Call it after upgrading from a version
    /// without the index, once no instance of that version writes any more: entries an older
    /// version writes after the rebuild are not in the index. The embedded store's index is
    /// always complete.
    ///
    /// ```
    /// # cachekit::__doc_block_on(async {
    /// let cache = cachekit::CacheService::memory();
    /// assert_eq!(cache.rebuild_index().await.unwrap(), 0);
    /// # });
    /// ```
    pub async fn rebuild_index(&self) -> Result<u64, CacheError> {
        let guard = self.guard();
        let rebuild = guard.backend().rebuild_index(self.prefix());
        guard
            .call("rebuild_index", Bound::Admin, &Budget::default(), rebuild)
            .await
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
