//! The storage behind a [`CacheService`](crate::CacheService).
//!
//! A backend stores opaque bytes under physical keys (the service has already added its prefix
//! and encoded the value). The service owns everything else: timeouts, the circuit breaker,
//! statistics, fallbacks, decoding. Implement [`Backend`] to bring your own store and pass it to
//! [`CacheServiceBuilder::backend`](crate::CacheServiceBuilder::backend).

use crate::CacheError;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

pub(crate) mod batch;
pub(crate) mod conn;
pub mod memory;
pub mod redis;

pub use memory::MemoryBackend;
pub use redis::RedisBackend;

/// Which kind of store a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// A standalone Redis server ([`RedisBackend`]).
    Redis,
    /// The embedded in-process store ([`MemoryBackend`]).
    Memory,
    /// No store: every read misses and the loader always runs. What a service configured with
    /// `REDIS_ENABLED=false` and the pass-through fallback, or a service whose configuration was
    /// invalid, runs on.
    Disabled,
    /// A user-supplied backend.
    Custom,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
            Self::Disabled => "disabled",
            Self::Custom => "custom",
        })
    }
}

/// Facts about the server behind a backend, reported by [`Health`](crate::Health).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The server's version, when it reports one.
    pub version: Option<String>,
    /// How long the server has been up.
    pub uptime_seconds: Option<u64>,
    /// Memory the server uses, in bytes.
    pub used_memory_bytes: Option<u64>,
    /// Clients connected to the server.
    pub connected_clients: Option<u64>,
    /// Keys in the server's database (`DBSIZE`, constant time), all prefixes included. A health
    /// check never walks the keyspace, so the keys under one prefix are not counted.
    pub db_keys: Option<u64>,
    /// The server's `maxmemory-policy`. With an `allkeys-*` policy and a memory limit, the
    /// server may evict the invalidation index, so pattern invalidations walk the keyspace.
    pub maxmemory_policy: Option<String>,
}

/// The bytes a lease marker starts with. No JSON text starts with a NUL byte, so a marker can
/// never be mistaken for a value.
pub const LEASE_MARKER_PREFIX: &[u8] = b"\0cachekit-lease:";

/// Whether stored bytes are a lease marker rather than a value.
pub fn is_lease_marker(bytes: &[u8]) -> bool {
    bytes.starts_with(LEASE_MARKER_PREFIX)
}

/// What a store answers when a loader asks for the lease on a key it found empty.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lease {
    /// The key was empty; it now holds the caller's marker until the lease TTL.
    Acquired,
    /// The key holds a value: someone filled it in the meantime.
    Value(Vec<u8>),
    /// Another loader holds the lease.
    Held,
}

/// A value read with what refresh-ahead and stale-if-error need to know of it: from
/// [`Backend::get_versioned`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versioned {
    /// The stored bytes.
    pub bytes: Vec<u8>,
    /// The TTL the entry has left; `None` when it has none (not written by this cache).
    pub left: Option<Duration>,
    /// Changes on every write of the key (and on its removal), so that a write conditioned on
    /// it ([`Backend::refill`]) is refused once anything else wrote or removed the key. Redis:
    /// the key's absolute expiry time (`PEXPIRETIME`), in milliseconds.
    pub version: u64,
}

impl Versioned {
    /// A read of `bytes`, `left` to live, at `version`.
    pub fn new(bytes: Vec<u8>, left: Option<Duration>, version: u64) -> Self {
        Self {
            bytes,
            left,
            version,
        }
    }
}

/// An object-safe store of bytes with per-entry expiry and glob removal.
///
/// Keys and patterns are physical: prefixed by the service, and patterns use Redis's glob
/// dialect ([`glob_match`](crate::key::glob_match)). Methods return errors rather than
/// swallowing them; the service decides how to degrade.
///
/// # Leases
///
/// A loader that misses takes a *lease*: [`try_lease`](Self::try_lease) atomically stores a
/// marker (bytes starting with [`LEASE_MARKER_PREFIX`]) in the empty key. Any removal of the key
/// (a delete, a pattern, `clear_all`, even a `DEL` from another program) removes the marker
/// with it; [`fill`](Self::fill) stores the loaded value only if the key still holds the
/// caller's marker. So a value loaded before an invalidation can never be written after it.
/// The default implementations, for stores without atomic operations, grant every lease and
/// fill unconditionally: correct, without that protection.
///
/// A lease marker lives for a short TTL that its holder renews ([`renew`](Self::renew)) while
/// it loads, so a holder that dies (its process or runtime stopped) wedges the key only until
/// that TTL runs out. A marker without a TTL is never a live lease: `try_lease` replaces it.
///
/// # Errors
///
/// Return [`CacheError::Backend`] (or a `Timeout`) for a store that cannot be reached: those
/// count toward the service's circuit breaker. The service applies its own timeout to every
/// call, so a backend needs none of its own.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Which kind of store this is.
    fn kind(&self) -> BackendKind;

    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;

    /// The value under `key` and, when the store knows it without another round trip, the
    /// TTL it has left. The in-process tier holds an entry no longer than that. The default
    /// returns [`get`](Self::get)'s value without a TTL: for stores whose other clients'
    /// writes, removals and expiries the tier learns of by other means.
    async fn get_with_ttl(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<Duration>)>, CacheError> {
        Ok(self.get(key).await?.map(|bytes| (bytes, None)))
    }

    /// Stores `value` under `key` for `ttl` (at least one millisecond).
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError>;

    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, CacheError>;

    /// Removes every key matching the glob `pattern`; returns how many were removed.
    async fn delete_matching(&self, pattern: &str) -> Result<u64, CacheError>;

    /// One round trip to the store, to measure latency and prove it answers.
    async fn ping(&self) -> Result<(), CacheError>;

    /// Takes the lease on `key` if it is empty: stores `marker` there for `ttl`, atomically.
    async fn try_lease(
        &self,
        key: &str,
        marker: &[u8],
        ttl: Duration,
    ) -> Result<Lease, CacheError> {
        let _ = (marker, ttl);
        Ok(match self.get(key).await? {
            Some(bytes) if is_lease_marker(&bytes) => Lease::Held,
            Some(bytes) => Lease::Value(bytes),
            None => Lease::Acquired,
        })
    }

    /// Stores `value` under `key` for `ttl` only if `key` still holds `marker`; returns whether
    /// it did. Atomic.
    async fn fill(
        &self,
        key: &str,
        marker: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let _ = marker;
        self.set(key, value, ttl).await?;
        Ok(true)
    }

    /// Removes `key` if it still holds exactly `expected`, atomically; returns whether it did.
    /// A loader gives its lease back this way (then `true` means the lease survived until now),
    /// and an undecodable value is removed this way, so a value written meanwhile survives.
    async fn release(&self, key: &str, expected: &[u8]) -> Result<bool, CacheError> {
        let _ = (key, expected);
        Ok(true)
    }

    /// Extends the lease `marker` on `key` to `ttl` from now, if `key` still holds it; returns
    /// whether it did. A loader renews its lease while it runs, so a slow loader keeps it and a
    /// dead one loses it soon.
    async fn renew(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let _ = (key, marker, ttl);
        Ok(true)
    }

    /// The value under `key` with the TTL it has left and its version (see [`Versioned`]), in
    /// one round trip: the read of refresh-ahead and stale-if-error. The default has no TTL,
    /// which turns both off for the store: its entries are fresh until they expire.
    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, CacheError> {
        Ok(self
            .get(key)
            .await?
            .map(|bytes| Versioned::new(bytes, None, 0)))
    }

    /// Takes the refresh claim on `key` for `ttl` if no one holds it, or extends it to `ttl`
    /// from now if `marker` holds it already; returns whether `marker` holds it. The right to
    /// reload a
    /// value that is still there (refresh-ahead, or past its TTL within its grace period). The
    /// claim lives beside the key and is given back with [`release_claim`](Self::release_claim).
    /// It only keeps other callers from reloading the key at the same time; what keeps a
    /// refresh from writing over an invalidation is [`refill`](Self::refill). The default
    /// grants every claim.
    async fn claim(&self, key: &str, marker: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let _ = (key, marker, ttl);
        Ok(true)
    }

    /// Gives back the refresh claim `marker` on `key`, if it still holds it.
    async fn release_claim(&self, key: &str, marker: &[u8]) -> Result<(), CacheError> {
        let _ = (key, marker);
        Ok(())
    }

    /// Stores a refreshed `value` under `key` for `ttl` only if the key still holds `expected`
    /// at `version` (nothing wrote or removed it since it was read); returns whether it did.
    /// Atomic. The default refuses: a store without versions does not refresh.
    async fn refill(
        &self,
        key: &str,
        version: u64,
        expected: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let _ = (key, version, expected, value, ttl);
        Ok(false)
    }

    /// Removes each of `keys`; returns how many existed. Stores with a batch command override
    /// this (Redis: `UNLINK` with many keys).
    async fn delete_many(&self, keys: &[String]) -> Result<u64, CacheError> {
        let mut removed = 0;
        for key in keys {
            removed += u64::from(self.delete(key).await?);
        }
        Ok(removed)
    }

    /// Files every key under `{prefix}:` that the store holds in its invalidation index, and
    /// marks the index complete; returns how many keys were not filed before. Stores without an
    /// index do nothing. See [`CacheService::rebuild_index`](crate::CacheService::rebuild_index).
    async fn rebuild_index(&self, prefix: &str) -> Result<u64, CacheError> {
        let _ = prefix;
        Ok(0)
    }

    /// Facts about the server, if the store has one, gathered at a cost that does not grow with
    /// the keyspace. `prefix_pattern` matches this service's keys.
    async fn server_info(&self, prefix_pattern: &str) -> Result<Option<ServerInfo>, CacheError> {
        let _ = prefix_pattern;
        Ok(None)
    }
}

/// The backend of a disabled cache: stores nothing, so every read misses.
#[derive(Debug, Default)]
pub(crate) struct DisabledBackend;

#[async_trait::async_trait]
impl Backend for DisabledBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Disabled
    }
    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(None)
    }
    async fn set(&self, _key: &str, _value: &[u8], _ttl: Duration) -> Result<(), CacheError> {
        Ok(())
    }
    async fn delete(&self, _key: &str) -> Result<bool, CacheError> {
        Ok(false)
    }
    async fn delete_matching(&self, _pattern: &str) -> Result<u64, CacheError> {
        Ok(0)
    }
    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
}
