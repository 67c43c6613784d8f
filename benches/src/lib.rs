//! Benchmarks of cachekit, and a runner that measures it side by side with what a user would
//! otherwise pick: raw redis-rs, and the `cached` crate's `#[concurrent_cached]` over its
//! `AsyncRedisCache`.
//!
//! The criterion benchmarks (`cargo bench -p cachekit-benches`) time the pieces: key building,
//! encoding and decoding the user record, an embedded-store hit, a Redis hit through
//! `CacheService::get`, and a `#[cached]` hit.
//!
//! The comparison runner ([`run`], behind
//! `cargo run --release -p cachekit-benches --bin compare`) measures everything in one
//! process, against one Redis, on the same ~1 KB JSON [`User`] record, interleaving the
//! contenders (call by call in a new random order each turn for latencies, block by block in a
//! rotating order for throughput) so that a noisy machine affects them alike; each figure's
//! ratio to raw redis-rs is computed per round and the median reported. See `BENCHMARKS.md` at
//! the workspace root for a run and what each figure means.

mod record;
mod repo;
mod report;
mod runner;
mod stats;

pub use record::{Address, Preferences, User};
pub use repo::{DbError, SLOW_LOAD, UserRepo};
pub use report::{Machine, Report, Row, Settings};

use cachekit_tests::RedisServer;
use std::fmt;

/// The prefix of every key the benchmarks write (cachekit's prefix, and the `cached` crate's
/// namespace), so that they can be removed from a shared Redis afterwards.
pub const PREFIX: &str = "cachekit-bench";

/// The names of the scenarios and contenders in a [`Report`].
pub mod names {
    /// The cost of one timing sample by itself.
    pub const CLOCK_SCENARIO: &str = "clock";
    /// One task reading the cached user again and again, each call timed.
    pub const SEQUENTIAL: &str = "sequential hit";
    /// One task reading the user from the embedded store, each call timed.
    pub const EMBEDDED: &str = "embedded store hit";
    /// 64 tasks reading the cached user at once: one hot key.
    pub const CONCURRENT: &str = "concurrent hit (64 tasks)";
    /// 64 tasks reading 1,000 users at once, each task walking them from its own start.
    pub const CONCURRENT_SPREAD: &str = "concurrent hit, 1,000 keys (64 tasks)";
    /// 1,000 concurrent calls on one cold key with a 50 ms loader.
    pub const STAMPEDE: &str = "stampede";
    /// Removing `users:*` among many other keys.
    pub const INVALIDATION: &str = "invalidate users:*";
    /// One task writing the user record again and again, each call timed: what filing each
    /// entry in the invalidation index costs a write.
    pub const SEQUENTIAL_WRITE: &str = "sequential write";
    /// One task missing on a new key each call (read, lease, load, fill), each call timed: what
    /// the index costs a fill.
    pub const SEQUENTIAL_FILL: &str = "sequential fill";
    /// The invalidation index's memory in Redis.
    pub const INDEX_MEMORY: &str = "index memory";
    /// One hot key read 1,000 times a second (10 tasks, each every 10 ms) for the round, TTL
    /// 1 s, a loader of 50 ms; ratios are to refresh-ahead off.
    pub const HOT_KEY: &str =
        "hot key, 1,000 reads/s, TTL 1 s, loader 50 ms (ratio to refresh-ahead off)";
    /// `get_or_load` on the hot key, refresh-ahead off.
    pub const REFRESH_OFF: &str = "cachekit get_or_load, refresh-ahead off";
    /// `get_or_load` on the hot key, refresh-ahead on with beta 1.0: the caller that draws
    /// refreshes.
    pub const REFRESH_ON: &str = "cachekit get_or_load, refresh_ahead(1.0)";
    /// `get_or_refresh` on the hot key (beta 1.0): the refresh runs in a task of its own.
    pub const REFRESH_BACKGROUND: &str = "cachekit get_or_refresh (background refresh)";
    /// Removing `users:*` among many other keys on a Redis Cluster of 3 primaries; ratios are
    /// to the walk (the service with its index off), not to raw redis-rs.
    pub const CLUSTER_INVALIDATION: &str = "invalidate users:* on a cluster (ratio to the walk)";
    /// One task reading the user from an in-process cache, each call timed.
    pub const LOCAL: &str = "in-process hit";
    /// The user record in each codec: its size in Redis (`STRLEN`), and a hit on the embedded
    /// store, which decodes on every read; ratios to JSON.
    pub const CODECS: &str = "codec";

    /// `Instant::now()` then `elapsed()`.
    pub const CLOCK: &str = "Instant::now + elapsed";
    /// redis-rs `GET` and `serde_json::from_slice` on a multiplexed connection: the baseline.
    /// The raw connections get the settings cachekit gives its own (response timeout 250 ms,
    /// pipeline buffer 1024).
    pub const RAW: &str = "redis-rs GET + serde_json (multiplexed)";
    /// The same on redis-rs's `ConnectionManager`, the connection cachekit and the `cached`
    /// crate use, configured as cachekit configures it.
    pub const RAW_MANAGER: &str = "redis-rs GET + serde_json (ConnectionManager)";
    /// Diagnostic (`--diagnostics`): the `ConnectionManager` read inside a
    /// `tokio::time::timeout`, the guard cachekit puts around every backend call.
    pub const RAW_MANAGER_TIMEOUT: &str =
        "redis-rs GET + serde_json (ConnectionManager) in tokio::time::timeout";
    /// `CacheService::get` on Redis.
    pub const SERVICE_GET: &str = "cachekit CacheService::get";
    /// Diagnostic (`--diagnostics`): `CacheService::get` on cachekit's own Redis backend with
    /// the guard switched off (no breaker, no fault counting, no per-call timer from the guard;
    /// batched reads keep the deadlines the batcher gives them).
    pub const SERVICE_GET_UNGUARDED: &str = "cachekit CacheService::get, guard off";
    /// Diagnostic (`--diagnostics`): `CacheService::get` on Redis with every read sent on its
    /// own, never queued into a batch behind the reads in flight.
    pub const SERVICE_GET_UNBATCHED: &str = "cachekit CacheService::get, reads unbatched";
    /// A `#[cached]` method on Redis.
    pub const MACRO: &str = "cachekit #[cached]";
    /// The `cached` crate's `#[concurrent_cached]` with its `AsyncRedisCache`.
    pub const CACHED_CRATE: &str = "cached #[concurrent_cached] AsyncRedisCache";
    /// `CacheService::get` on the embedded store.
    pub const MEMORY_GET: &str = "cachekit embedded CacheService::get";
    /// A `#[cached]` method on the embedded store.
    pub const MEMORY_MACRO: &str = "cachekit embedded #[cached]";
    /// moka's `sync::Cache::get` of an `Arc<User>`: the in-process baseline.
    pub const MOKA_ARC: &str = "moka sync::Cache get of an Arc<User>";
    /// `CacheService::get::<Arc<User>>` on Redis, served by the in-process tier.
    pub const TIER_ARC: &str = "cachekit CacheService::get::<Arc<User>>, in-process tier";
    /// `CacheService::get::<User>` on Redis, served by the in-process tier (a clone of the
    /// record per hit).
    pub const TIER_USER: &str = "cachekit CacheService::get::<User>, in-process tier";
    /// A `#[cached]` method returning `User` on Redis, served by the in-process tier.
    pub const TIER_MACRO: &str = "cachekit #[cached] -> User, in-process tier";
    /// `CacheService::get::<Arc<User>>` on the embedded store with the in-process tier.
    pub const MEMORY_TIER_ARC: &str =
        "cachekit embedded CacheService::get::<Arc<User>>, in-process tier";
    /// `CacheService::get::<User>` on the embedded store, values in JSON (the default).
    pub const CODEC_JSON: &str = "json";
    /// The same with `Codec::MessagePack`.
    pub const CODEC_MSGPACK: &str = "msgpack";
    /// The same in JSON with `compress_above(1)`: LZ4 whenever it saves space.
    pub const CODEC_JSON_LZ4: &str = "json + lz4";
    /// The same in MessagePack with `compress_above(1)`.
    pub const CODEC_MSGPACK_LZ4: &str = "msgpack + lz4";
    /// `serde_json::from_slice` of the record alone, no store: the decoding every hit pays,
    /// measured beside the embedded store's hits.
    pub const DECODE_ONLY: &str = "serde_json::from_slice alone (no store)";
    /// Cache-aside written by hand on redis-rs (`GET`; on a miss, load and `SET`): the
    /// stampede's baseline.
    pub const RAW_CACHE_ASIDE: &str = "redis-rs hand-written cache-aside";
    /// `SCAN MATCH` + `UNLINK` written by hand on redis-rs: the invalidation's baseline.
    pub const RAW_SCAN: &str = "redis-rs SCAN + UNLINK";
    /// `CacheService::invalidate_pattern`, answered by the invalidation index.
    pub const SERVICE_INVALIDATE: &str = "cachekit invalidate_pattern";
    /// Diagnostic: `CacheService::invalidate_pattern` with the index off: a `SCAN` walk.
    pub const SERVICE_INVALIDATE_UNINDEXED: &str = "cachekit invalidate_pattern, index off";
    /// `UNLINK` of the matching keys' names, known in advance, pipelined in batches of 1,000:
    /// the floor of any removal.
    pub const RAW_UNLINK_KNOWN: &str = "redis-rs UNLINK of the known names";
    /// `CacheService::set` with the index off: the write scenario's baseline.
    pub const SERVICE_SET_UNINDEXED: &str = "cachekit CacheService::set, index off";
    /// `CacheService::set`, filing the entry in the index.
    pub const SERVICE_SET: &str = "cachekit CacheService::set";
    /// redis-rs `SET ... PX` of `serde_json::to_vec` of the record.
    pub const RAW_SET: &str = "redis-rs serde_json + SET PX (multiplexed)";
    /// The same `SET` filed by hand as `CacheService::set` files it: one transaction of
    /// `SET`, `ZADD LT` into the namespace's index and `SADD` into the registry. The floor of
    /// an atomic indexed write, beside the service's.
    pub const RAW_SET_FILED: &str = "redis-rs serde_json + MULTI SET ZADD SADD EXEC";
    /// `CacheService::get_or_load` missing, with the index off: the fill scenario's baseline.
    pub const SERVICE_FILL_UNINDEXED: &str = "cachekit get_or_load miss, index off";
    /// `CacheService::get_or_load` missing: the lease and the fill file the key in the index.
    pub const SERVICE_FILL: &str = "cachekit get_or_load miss";
    /// The sorted set of the `users` namespace holding the matching entries: `MEMORY USAGE`
    /// divided by its members.
    pub const INDEX_PER_ENTRY: &str = "users index (MEMORY USAGE / members)";
    /// On a cluster: every index key's `MEMORY USAGE` (one index, drain set and registry per
    /// slot and namespace) over the entries filed.
    pub const CLUSTER_INDEX_PER_ENTRY: &str = "cluster index (MEMORY USAGE of its keys / entries)";
}

/// How to run the comparison.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Far less work (a few seconds): for CI, so that the runner cannot rot. Its figures are
    /// not worth quoting.
    pub quick: bool,
    /// The Redis to use. `None`: start a private `redis-server` on a free port. The run writes
    /// keys under [`PREFIX`] (a million of them in full mode) and removes them at the end.
    pub redis_url: Option<String>,
    /// Report progress on stderr.
    pub progress: bool,
    /// Also measure diagnostic contenders that isolate parts of cachekit's cost: raw redis-rs
    /// inside cachekit's per-call timeout, and cachekit without that timeout.
    pub diagnostics: bool,
    /// Run only these scenario groups (see [`GROUPS`]); empty: all of them.
    pub only: Vec<String>,
}

/// The scenario groups `--only` can pick: the hit scenarios (sequential, embedded,
/// concurrent), the in-process hits, the stampede, the sequential writes and fills, the
/// invalidation, the hot key with and without refresh-ahead, and the invalidation on a
/// private Redis Cluster, and the codecs.
pub const GROUPS: [&str; 8] = [
    "hits",
    "local",
    "codecs",
    "stampede",
    "writes",
    "invalidation",
    "hotkey",
    "cluster",
];

/// Why the comparison could not run.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

macro_rules! error_from {
    ($($source:ty),*) => {$(
        impl From<$source> for Error {
            fn from(error: $source) -> Self {
                Self(error.to_string())
            }
        }
    )*};
}

error_from!(
    redis::RedisError,
    serde_json::Error,
    std::io::Error,
    tokio::task::JoinError,
    cachekit::CacheError
);

impl From<DbError> for Error {
    fn from(error: DbError) -> Self {
        Self(format!("{error:?}"))
    }
}

/// Runs the comparison: starts a private Redis unless `options` names one, measures every
/// scenario, and returns the figures. Blocks; call it outside any async runtime.
///
/// # Errors
///
/// When Redis cannot be reached, or a contender misbehaves (a hit that misses, a wrong value,
/// a wrong count of removed keys).
///
/// # Panics
///
/// When a private `redis-server` cannot be started (the message says how to install it).
pub fn run(options: &Options) -> Result<Report, Error> {
    let (server, url, redis) = match &options.redis_url {
        Some(url) => (None, url.clone(), "external"),
        None => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url, "private redis-server")
        }
    };
    repo::set_cached_crate_url(&url).map_err(Error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mode = if options.quick { "quick" } else { "full" };
    let external = server.is_none();
    let report = runtime.block_on(async {
        let mut runner = runner::Runner::new(options, url).await?;
        if external {
            // A shared Redis: start and end without the benchmark's keys.
            runner.clean_up().await?;
        }
        let report = runner.run(mode, redis).await;
        if external {
            runner.clean_up().await?;
        }
        report
    });
    drop(runtime);
    drop(server);
    report
}

/// Runs `calls` sequential hits of one contender (a name from [`names`]; the diagnostic ones
/// included) against the Redis at `url`, untimed: a steady loop to run under a profiler
/// (`valgrind --tool=callgrind`, `perf record`). See `examples/hit_loop.rs`.
///
/// # Errors
///
/// As [`run`].
#[doc(hidden)]
pub fn hit_loop(url: &str, contender: &str, calls: usize) -> Result<(), Error> {
    repo::set_cached_crate_url(url).map_err(Error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = Options {
        diagnostics: true,
        ..Options::default()
    };
    runtime.block_on(async {
        let mut runner = runner::Runner::new(&options, url.to_owned()).await?;
        runner.hit_loop(contender, calls).await
    })
}
