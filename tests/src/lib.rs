//! Integration-test support for cachekit: private `redis-server` processes.
//!
//! Every test that needs Redis starts its own server with [`RedisServer::start`]: a free loopback
//! port, nothing persisted (no RDB, no AOF; only a log file in a temporary directory), killed and
//! cleaned up when the handle drops. Tests therefore run in parallel without sharing state, and can
//! [`kill`](RedisServer::kill), [`pause`](RedisServer::pause) and
//! [`restart`](RedisServer::restart) their server to exercise outages. The Redis that may already
//! run on `127.0.0.1:6379` is never touched.
//!
//! Tests read and write Redis behind the cache's back with the one-command helpers of [`raw`],
//! and put a [`FaultProxy`] between a service and its server to stall, delay or cut the network.
//!
//! A missing `redis-server` binary is a test failure with installation instructions, never a skip:
//! run `bash scripts/test.sh`, which installs it.
//!
//! ```
//! use cachekit_tests::RedisServer;
//!
//! let server = RedisServer::start();
//! let mut conn = server.client().get_connection().unwrap();
//! let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
//! assert_eq!(pong, "PONG");
//! assert!(server.url().starts_with("redis://127.0.0.1:"));
//! ```

mod binary;
pub mod checker;
pub mod cluster;
pub mod logs;
mod port;
pub mod proxy;
pub mod raw;
mod server;
pub mod tls;

pub use cluster::RedisCluster;
pub use proxy::FaultProxy;
pub use server::RedisServer;

/// Awaits `call`, failing the test if it does not complete within `bound`: a hang detector for
/// calls that are bounded by much shorter timeouts, never a measurement.
pub async fn within<T>(bound: std::time::Duration, what: &str, call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(bound, call).await {
        Ok(value) => value,
        Err(_) => panic!("`{what}` did not complete within {bound:?}"),
    }
}

/// Installs a `tracing` subscriber for tests; call it first in any test, as often as you like.
///
/// The filter comes from `RUST_LOG` (default `warn`); output goes through the test writer, so
/// `cargo test` shows it only for failing tests (or with `--nocapture`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only when a global subscriber is already installed, by an earlier call: that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
