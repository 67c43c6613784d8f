//! What the examples' integration tests share: a cache on a private server, and killing it.
//! Their raw Redis reads come from `cachekit_tests::raw`.

// Each test file compiles this module for itself and uses only part of it.
#![allow(dead_code)]

use cachekit::CacheService;
use cachekit_tests::RedisServer;

/// A service on `server`, storing its keys under `{prefix}:`.
pub(crate) async fn redis_cache(server: &RedisServer, prefix: &str) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(prefix)
        .build()
        .await
        .expect("a valid configuration builds")
}

/// Kills the server; the harness blocks while it waits, hence `block_in_place` (and a
/// multi-threaded runtime).
pub(crate) fn kill(server: &RedisServer) {
    tokio::task::block_in_place(|| server.kill());
    assert!(!server.is_running());
}
