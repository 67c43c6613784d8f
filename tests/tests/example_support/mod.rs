//! What the examples' integration tests share: a cache on a private server, and raw Redis
//! reads for their assertions.

// Each test file compiles this module for itself and uses only part of it.
#![allow(dead_code)]

use cachekit::CacheService;
use cachekit_tests::RedisServer;
use redis::aio::MultiplexedConnection;

/// A service on `server`, storing its keys under `{prefix}:`.
pub(crate) async fn redis_cache(server: &RedisServer, prefix: &str) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(prefix)
        .build()
        .await
        .expect("a valid configuration builds")
}

/// `GET key`, as text.
pub(crate) async fn raw_get(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET works")
}

/// The keys matching `pattern`, sorted, with `SCAN`.
pub(crate) async fn raw_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(100)
            .query_async(conn)
            .await
            .expect("SCAN works");
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
}

/// Kills the server; the harness blocks while it waits, hence `block_in_place` (and a
/// multi-threaded runtime).
pub(crate) fn kill(server: &RedisServer) {
    tokio::task::block_in_place(|| server.kill());
    assert!(!server.is_running());
}
