//! Raw Redis commands for test assertions: what the tests read and write behind the cache's back.
//!
//! Each function sends one command (or one `SCAN` loop) on a connection from
//! [`RedisServer::connection`](crate::RedisServer::connection) and panics with the command's name
//! and the key when Redis answers with an error: these are assertions' plumbing, never the code
//! under test. Keys are physical keys, prefix included.
//!
//! ```
//! use cachekit_tests::{RedisServer, raw};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = RedisServer::start();
//! let mut conn = server.connection().await;
//! raw::set(&mut conn, "app:users:1", "Ada").await;
//! assert_eq!(raw::get::<Option<String>>(&mut conn, "app:users:1").await.as_deref(), Some("Ada"));
//! assert!(raw::exists(&mut conn, "app:users:1").await);
//! assert_eq!(raw::pttl(&mut conn, "app:users:1").await, -1);
//! assert_eq!(raw::keys(&mut conn, "app:*").await, ["app:users:1"]);
//! # });
//! ```

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, ToRedisArgs};

/// Keys asked for per `SCAN` round trip in [`keys`].
const SCAN_COUNT: u64 = 1000;

/// `GET key`, as whatever `T` the caller reads it into: `Option<String>`, `Option<Vec<u8>>`, or
/// `Vec<u8>` when the key must exist.
///
/// # Panics
///
/// On a Redis error, or when the reply does not convert to `T` (for instance a missing key read
/// as `Vec<u8>`, or a non-UTF-8 value read as a `String`).
pub async fn get<T: FromRedisValue>(conn: &mut MultiplexedConnection, key: &str) -> T {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw GET {key:?} failed: {error}"))
}

/// `SET key value`, with no expiry.
///
/// # Panics
///
/// On a Redis error.
pub async fn set(conn: &mut MultiplexedConnection, key: &str, value: impl ToRedisArgs) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw SET {key:?} failed: {error}"));
}

/// `SET key value PX ttl`: the value expires after `ttl` (at millisecond precision).
///
/// # Panics
///
/// On a Redis error (a zero `ttl` is one).
pub async fn set_px(
    conn: &mut MultiplexedConnection,
    key: &str,
    value: impl ToRedisArgs,
    ttl: Duration,
) {
    let millis = u64::try_from(ttl.as_millis()).expect("the TTL fits in u64 milliseconds");
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(millis)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw SET {key:?} PX {millis} failed: {error}"));
}

/// `EXISTS key`: whether the key holds a value (of any type).
///
/// # Panics
///
/// On a Redis error.
pub async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    let n: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw EXISTS {key:?} failed: {error}"));
    n == 1
}

/// `PTTL key`: the remaining time to live in milliseconds; `-1` for a key without expiry, `-2`
/// for a missing key.
///
/// # Panics
///
/// On a Redis error.
pub async fn pttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw PTTL {key:?} failed: {error}"))
}

/// `TTL key`: the remaining time to live in whole seconds; `-1` for a key without expiry, `-2`
/// for a missing key.
///
/// # Panics
///
/// On a Redis error.
pub async fn ttl(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw TTL {key:?} failed: {error}"))
}

/// `DBSIZE`: the number of keys in the connection's database.
///
/// # Panics
///
/// On a Redis error.
pub async fn dbsize(conn: &mut MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw DBSIZE failed: {error}"))
}

/// How many times the server has run `command` (lower case: `scan`, `evalsha`), from `INFO
/// commandstats`; 0 for a command it has not run.
///
/// # Panics
///
/// On a Redis error, or a call count that is not a number.
pub async fn command_calls(conn: &mut MultiplexedConnection, command: &str) -> u64 {
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_else(|error| panic!("raw INFO commandstats failed: {error}"));
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a call count"))
}

/// The keys in the connection's database that hold data rather than cachekit's invalidation
/// index (`{prefix}#ix:...`, `{prefix}#ns`, ...: a `#` before the first `:`), by `SCAN`.
///
/// # Panics
///
/// On a Redis error, or on a key that is not UTF-8.
pub async fn data_keys(conn: &mut MultiplexedConnection) -> u64 {
    let all = keys(conn, "*").await;
    all.iter()
        .filter(|key| !key.split(':').next().unwrap_or_default().contains('#'))
        .count() as u64
}

/// The keys matching the glob `pattern`, sorted, by `SCAN … MATCH pattern` until the cursor
/// returns to 0 (never `KEYS`).
///
/// # Panics
///
/// On a Redis error, or on a key that is not UTF-8.
pub async fn keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await
            .unwrap_or_else(|error| panic!("raw SCAN MATCH {pattern:?} failed: {error}"));
        keys.extend(batch);
        if next == 0 {
            keys.sort();
            return keys;
        }
        cursor = next;
    }
}
