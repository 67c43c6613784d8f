//! # cachekit
//!
//! Cache-aside for async Rust services. Annotate repository methods with
//! `#[cached(ttl = 300, key = "users:{id}")]` and `#[invalidates("users:*")]`, and reads are
//! served from Redis (or an in-process store) until they expire or a write invalidates them.
//! Underneath is [`CacheService`], which never lets a cache fault break the caller: Redis down,
//! slow, or returning garbage means the call goes to the loader (your database), the fault is
//! logged and counted, and the service heals itself when Redis returns.
//!
//! ## Quick start
//!
//! ```
//! use cachekit::CacheService;
//! use std::time::Duration;
//!
//! # cachekit::__doc_block_on(async {
//! // `CacheService::from_env().await` reads REDIS_URL & co; with nothing configured it uses the
//! // embedded store, as here.
//! let cache = CacheService::memory();
//!
//! let roles = cache
//!     .get_or_load("user_roles:7", Some(Duration::from_secs(60)), || async {
//!         Ok::<_, std::io::Error>(vec!["admin".to_string()]) // your database query
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(roles, ["admin"]);
//! assert_eq!(cache.get::<Vec<String>>("user_roles:7").await, Some(roles));
//! cache.invalidate_pattern("user_roles:*").await;
//! assert_eq!(cache.stats().hits, 1);
//! # });
//! ```
//!
//! ## Configuration from the environment
//!
//! [`CacheService::from_env`] (and [`CacheConfig::from_env`]) read these variables, the names
//! the usual `.env` files already have:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `REDIS_URL` | — | `redis://[user[:password]@]host[:port][/db]` or `rediss://...` (TLS). Wins over the parts below. |
//! | `REDIS_HOST` | `127.0.0.1` | Redis host (used when `REDIS_URL` is unset) |
//! | `REDIS_PORT` | `6379` | Redis port |
//! | `REDIS_DB` | `0` | database number |
//! | `REDIS_USERNAME` | — | ACL user name |
//! | `REDIS_PASSWORD` | — | password (never logged) |
//! | `REDIS_CLUSTER_NODES` | — | a Redis Cluster: comma-separated node URLs, `redis://[user[:password]@]host:port` (or `rediss://`), no `/db`; any node that answers is enough. Credentials from the URLs or `REDIS_USERNAME`/`REDIS_PASSWORD`. Not with `REDIS_URL` |
//! | `REDIS_SSL` | `false` | connect with TLS |
//! | `REDIS_TLS_CA_FILE` | — | PEM file of the CA(s) to trust instead of the system's trust store (a private CA); needs TLS |
//! | `REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE` | — | PEM client certificate and private key, for a server that requires mutual TLS; needs TLS |
//! | `REDIS_ENABLED` | set when `REDIS_URL` or `REDIS_HOST` is | `false`: no Redis; the embedded store if `CACHE_FALLBACK=memory`, else no caching |
//! | `CACHE_BACKEND` | inferred | `redis`, `memory` or `none`: overrides the inference above |
//! | `CACHE_TTL` | `300` | default TTL in seconds (`REDIS_DEFAULT_TTL` is read when `CACHE_TTL` is unset) |
//! | `CACHE_PREFIX` | `cachekit` | every key is stored as `{prefix}:{key}`; avoid `:` in it (logged as a warning): `app` and `app:users` nest, and the first's patterns and `clear_all` reach the second's keys |
//! | `CACHE_TIMEOUT_MS` | `250` | bound on one cache operation |
//! | `CACHE_CONNECT_TIMEOUT_MS` | `1000` | bound on making a connection |
//! | `CACHE_ADMIN_TIMEOUT_MS` | `30000` | bound on a whole `invalidate_pattern`/`clear_all` |
//! | `CACHE_BREAKER_THRESHOLD` | `5` | consecutive failures that open the circuit breaker |
//! | `CACHE_BREAKER_OPEN_MS` | `5000` | how long the open breaker skips Redis before probing |
//! | `CACHE_FALLBACK` | `passthrough` | while Redis is unavailable: `passthrough` (go to the loader) or `memory` (a short-lived in-process store; see [`Fallback::Memory`] for its trade-off) |
//! | `CACHE_FALLBACK_TTL` | `30` | TTL in seconds of the in-process fallback store |
//! | `CACHE_MEMORY_MAX_BYTES` | `67108864` | bound on the embedded store, in bytes: keys, values and an estimated [overhead per entry](backend::MemoryBackend::ENTRY_OVERHEAD_BYTES); see [`MemoryBackend`](backend::MemoryBackend) for its eviction policy |
//! | `CACHE_SINGLE_FLIGHT` | `true` | concurrent misses of one key in a process run the loader once |
//! | `CACHE_LEASES` | `true` | misses take a lease in the store: one loader per key across processes, no stale sets |
//! | `CACHE_LEASE_TTL_MS` | `10000` | the longest a caller waits for another process's (or a failed in-process) loader before loading for itself, without writing; a lease itself lives about 1.5 × `CACHE_TIMEOUT_MS` and is renewed while its loader runs |
//! | `CACHE_MAX_VALUE_BYTES` | `4194304` | the largest encoded value cached, in bytes: a larger one is not stored (logged, counted), and one found in the store reads as a miss and is removed |
//! | `CACHE_REFRESH_AHEAD` | — (off) | refresh-ahead for every cache-aside call, with this beta (`1.0` is the usual choice; `off`): see [`CacheServiceBuilder::refresh_ahead`] |
//! | `CACHE_STALE_IF_ERROR_SECS` | — (off) | stale-if-error: keep values this many seconds past their TTL, served only when the loader fails (`0`: off): see [`CacheServiceBuilder::stale_if_error`] |
//! | `CACHE_METRICS` | `false` | report metrics through the `metrics` facade: see [Metrics](#metrics) |
//! | `CACHE_REDACT_KEYS` | `false` | logs show keys as their namespace and a hash (`users:#3fa9c1d2`) instead of in full |
//! | `CACHE_LOCAL_TTL_MS` | — (off) | turns on the in-process tier, holding decoded values for at most this many ms |
//! | `CACHE_LOCAL_MAX_BYTES` | `67108864` | bound on the in-process tier, in bytes |
//! | `CACHE_CODEC` | `json` | how values are written: `json`, or `msgpack` (cargo feature `msgpack`); see [`codec`] |
//! | `CACHE_COMPRESS_ABOVE` | `0` (off) | values whose encoding has at least this many bytes are stored LZ4-compressed (cargo feature `compression`) |
//!
//! With none of them set, the service runs on the embedded in-process store. TTLs and
//! timeouts are at most [`MAX_TTL`] (10 years): a larger value is an error naming the variable
//! and the bound. In `REDIS_URL`, percent-encode `/`, `?`, `#` and `@` in the password (`%2F`,
//! `%3F`, `%23`, `%40`), or set it in `REDIS_PASSWORD` instead; URL errors quote no part of the
//! URL.
//!
//! ## Keys and values
//!
//! A logical key `users:1` is stored under `{prefix}:users:1`; its value is the JSON of the
//! value, readable with `redis-cli GET` and by services in other languages. Other
//! [codecs](codec) (MessagePack, LZ4 compression) are opt-in cargo features, and an application
//! can bring its own ([`codec::CustomCodec`]); their values carry a three-byte header naming the
//! codec, and a value of another codec reads as a miss. The macros build
//! logical keys in a stable format documented in [`key`]: the template with each placeholder
//! replaced by its argument's `Display` form, in which `%` and `:` are written `%25` and `%3A`
//! ([`key::escape_part`]), so that `key = "route:{from}:{to}"` gives `route:a%3Ab:c` for
//! `("a:b", "c")` and `route:a:b%3Ac` for `("a", "b:c")`, never one key for both. Patterns use
//! Redis's glob syntax and apply inside the prefix only: `clear_all` removes the service's
//! keys and no others.
//!
//! ## Pattern invalidation
//!
//! Every write files its key, in the same atomic step, in a set per *namespace* (the first
//! `:`-separated part of the key), on Redis and in the embedded store alike. So the patterns
//! the macros use cost what they remove, not the size of Redis:
//!
//! - `users:*` (a whole namespace) and `*` ([`CacheService::clear_all`]): the namespace's set,
//!   drained 1,000 entries at a time;
//! - `users:1*`, `users:*:roles` (a namespace, then globs): a scan of that namespace's set;
//! - `users:7` (no glob): one key;
//! - anything else (`*:7`, `u*`): a walk of the whole keyspace with `SCAN`, as correct and as
//!   slow as before.
//!
//! On Redis the index answers once it holds every entry: a prefix written by a version without
//! it is rebuilt in the background by the first pattern invalidation (which walks meanwhile), or
//! by [`CacheService::rebuild_index`]. On a server with an `allkeys-*` eviction policy, which
//! could evict the index, patterns walk. The index costs Redis memory per entry and adds a few
//! commands to each write (about 100 bytes, and 1.09x-1.17x the latency of a `set` on loopback
//! over the runs of the comparison runner); the README has the figures and the keys it adds
//! (`{prefix}#...`, never under `{prefix}:`).
//!
//! ## The in-process tier
//!
//! [`CacheServiceBuilder::local_tier`] (or `CACHE_LOCAL_TTL_MS`) puts a tier of *decoded*
//! values in front of the store: a hit is a hash lookup and a clone (return `Arc<T>` to make it
//! a reference count), as fast as moka holding the same `Arc`. It stays coherent:
//!
//! - this instance's own writes and removals evict before they return, so a read after one of
//!   them never sees the older value;
//! - other instances' and other clients' writes, expiries and `FLUSHDB` arrive through Redis's
//!   client tracking (RESP3 `CLIENT TRACKING ON BCAST PREFIX {prefix}:` on a connection of its
//!   own), typically within a millisecond;
//! - if that connection drops, closes or misses its heartbeat (every 100 ms, bounded by the
//!   operation timeout), the tier is flushed and bypassed until tracking is back
//!   ([`CacheStats::local_flushes`]).
//!
//! So across instances a read can lag a write by the invalidation's delivery, and by at most
//! 100 ms plus the operation timeout while the connection stalls unnoticed. Functions that
//! cannot accept that opt out with `#[cached(..., no_local)]`. Hits it serves are counted in
//! [`CacheStats::local_hits`]. The README's "The in-process tier" has the measured figures.
//!
//! Concurrent reads of one key share requests to the store, in turns: a reader takes only the
//! reply of a request sent after it arrived, decoded once per type and cloned for the others
//! ([`CacheStats::reads_coalesced`]).
//!
//! ## Production Redis: TLS, ACL users, Redis Cluster
//!
//! - `rediss://` (or `REDIS_SSL=true`) connects with TLS, verified against the system's trust
//!   store, or against a private CA given with [`CacheServiceBuilder::tls_ca_file`]
//!   (`REDIS_TLS_CA_FILE`); [`CacheServiceBuilder::tls_client_cert`] presents a client
//!   certificate for mutual TLS. See [`TlsOptions`].
//! - [`acl_rules`] gives the ACL rules of a Redis user limited to the service's prefix and to
//!   the commands cachekit sends.
//! - [`CacheServiceBuilder::redis_cluster`] (`REDIS_CLUSTER_NODES`) runs on a Redis Cluster:
//!   keys keep their format, the invalidation index is kept per slot (a namespace pattern
//!   drains only the slots that hold it; `clear_all` walks every primary with `SCAN`), and the
//!   in-process tier tracks every primary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cachekit::CacheError> {
//! let cache = cachekit::CacheService::builder()
//!     .redis_cluster(["rediss://10.0.0.1:7000", "rediss://10.0.0.2:7000"])
//!     .tls_ca_file("/etc/redis/ca.pem")
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## Metrics
//!
//! With [`CacheServiceBuilder::metrics`] (or `CACHE_METRICS=true`) the service reports through
//! the [`metrics`](https://docs.rs/metrics) facade to whatever recorder the application
//! installed (`metrics-exporter-prometheus`, an OpenTelemetry bridge, StatsD...); install it
//! before the service's first call. Off, nothing is measured beyond [`CacheService::stats`].
//! `namespace` is the part of the logical key (or pattern) before its first `:` (`users` for
//! `users:42`, `_` for a key without one, `*` for `clear_all` and patterns whose first part is a
//! glob); never a key. After [`metrics::MAX_NAMESPACES`] distinct namespaces, the rest are
//! reported as `_other`. The names are in [`metrics::names`].
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `cachekit_hits_total` | counter | `namespace`, `tier` (`store`, `local`) | reads that found a value |
//! | `cachekit_misses_total` | counter | `namespace` | reads that found nothing usable |
//! | `cachekit_loads_total` | counter | `namespace` | loader runs (misses and refreshes) |
//! | `cachekit_load_errors_total` | counter | `namespace` | loader runs that returned an error |
//! | `cachekit_load_duration_seconds` | histogram | `namespace` | loader run time |
//! | `cachekit_invalidated_entries_total` | counter | `namespace` | entries removed by `delete`, patterns, `clear_all` |
//! | `cachekit_coalesced_total` | counter | `namespace` | calls served by a concurrent load or read of the same key |
//! | `cachekit_stale_sets_prevented_total` | counter | `namespace` | loaded values not written: the key was invalidated while they loaded |
//! | `cachekit_refreshes_total` | counter | `namespace` | values refreshed and written back |
//! | `cachekit_stale_served_total` | counter | `namespace` | values served past their TTL because the loader failed |
//! | `cachekit_faults_total` | counter | `kind` (`timeout`, `connection`, `out_of_memory`, `no_permission`, `wrong_type`, `read_only`, `busy`, `too_large`, `other_reply`) | backend faults |
//! | `cachekit_operation_duration_seconds` | histogram | `op` (`get`, `set`, `delete`, `lease`, `fill`, `release`, `renew`, `claim`, `invalidate_pattern`, `replay`, `rebuild_index`, `ping`) | backend operations, timeouts included |
//! | `cachekit_breaker_state` | gauge | — | `0` closed, `1` half-open, `2` open |
//!
//! The `roles_api` example serves them at `GET /metrics` in the Prometheus text format.
//!
//! ## Tracing spans
//!
//! Each cache operation runs in a `debug` span: `cachekit.get`, `cachekit.get_or_load` (also
//! every `#[cached]` call), `cachekit.set`, `cachekit.delete`, `cachekit.invalidate`, and each
//! loader run in a `cachekit.load` span inside its call's. Fields: `namespace`; `key` (or
//! `pattern`) as logs show it, so [`CacheServiceBuilder::redact_keys`] applies; `hit`; `tier`
//! (`store` or `local`); `lease` (`taken`, `waited`, `gave_up`); `stale`; `removed`; `failed`
//! (a load that returned an error). Without a subscriber that enables them, a span is a check
//! of a static flag: the comparison runner measured the hit path with the spans compiled in
//! (`BENCHMARKS.md`, "The sixth version").
//!
//! ## Failure handling
//!
//! - Every Redis call is bounded by a timeout; repeated failures open a circuit breaker that
//!   skips Redis for a cool-down, then probes it and closes by itself when Redis answers.
//! - Start-up with Redis unreachable succeeds, degraded, and reconnects in the background.
//! - A stored value that does not decode into the requested type is a miss: the entry is
//!   deleted and a warning logged.
//! - Passwords never appear in `Debug` output, logs or errors.
//!
//! ## Features
//!
//! - `tls` (default): `rediss://` URLs, through rustls.
//! - `msgpack`: [`Codec::MessagePack`](codec::Codec), values stored as MessagePack (rmp-serde).
//! - `compression`: [`CacheServiceBuilder::compress_above`], values above a size stored
//!   LZ4-compressed (lz4_flex: pure Rust, its safe and bounds-checked decoder; LZ4 rather than
//!   zstd because its decode costs a fraction of a JSON decode, and it builds without a C
//!   compiler).

#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod acl;
pub mod backend;
mod breaker;
mod coalesce;
pub mod codec;
mod config;
mod entry;
mod error;
mod flight;
mod fresh;
mod guard;
mod index;
mod invalidate;
pub mod key;
mod lease;
mod load;
pub mod metrics;
mod service;
mod stats;
mod tier;
mod warm;

pub use acl::{ACL_COMMANDS, acl_rules};
pub use backend::{Backend, BackendKind, ServerInfo};
pub use breaker::BreakerState;
pub use config::{
    CacheConfig, CacheServiceBuilder, DEFAULT_ADMIN_TIMEOUT, DEFAULT_BREAKER_OPEN_FOR,
    DEFAULT_BREAKER_THRESHOLD, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FALLBACK_TTL, DEFAULT_LEASE_TTL,
    DEFAULT_LOCAL_MAX_BYTES, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PREFIX, DEFAULT_TIMEOUT, DEFAULT_TTL,
    Fallback, MAX_TTL, RedisClusterConfig, RedisConfig, StoreConfig, TlsOptions,
};
pub use error::{CacheError, FaultKind};
pub use invalidate::MAX_DEFERRED;
pub use service::{CacheService, Fetched, HasCache, Health, global, set_global};
pub use stats::{CacheStats, FaultStats};
pub use warm::{WarmUp, WarmUpReport};

pub use cachekit_macros::{cached, invalidates};

/// Runs a future to completion on a fresh current-thread runtime: lets the doc examples be
/// plain `async` code without a dependency of their own.
#[doc(hidden)]
pub fn __doc_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn public_futures_are_send() {
        let cache = CacheService::memory();
        assert_send(&cache.get::<String>("k"));
        assert_send(&cache.try_get::<String>("k"));
        assert_send(&cache.set("k", &1, None));
        assert_send(&cache.try_set("k", &1, None));
        assert_send(&cache.delete("k"));
        assert_send(&cache.invalidate_pattern("k*"));
        assert_send(&cache.clear_all());
        assert_send(&cache.health());
        assert_send(&cache.get_or_load("k", None, || async { Ok::<u8, std::io::Error>(1) }));
        assert_send(&CacheService::from_env());
        assert_send(&CacheService::builder().build());
        fn service_is_send_sync<T: Send + Sync + Clone>() {}
        service_is_send_sync::<CacheService>();
    }
}
