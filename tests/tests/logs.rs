//! What the log lines say: keys redacted when asked and the prefix warning; and a per-write
//! TTL out of range refused with a clear error. (Passwords: `service.rs` and `faults.rs`.)
//!
//! Each test installs its own subscriber for its own thread (`with_default` around a
//! current-thread runtime), writing into a buffer the test reads back.

use cachekit::{CacheService, MAX_TTL};
use cachekit_tests::RedisServer;
use cachekit_tests::logs::Captured;
use std::time::Duration;

/// Runs `test` on a current-thread runtime with a subscriber capturing every event; returns
/// the captured text.
fn captured<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> String {
    let logs = Captured::default();
    let _default = logs.install();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test());
    logs.text()
}

async fn service(server: &RedisServer, redact: bool) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix("logs")
        .redact_keys(redact)
        .build()
        .await
        .unwrap()
}

#[test]
fn with_redaction_warnings_show_the_namespace_and_a_hash_never_the_parameters() {
    let server = RedisServer::start();
    for redact in [false, true] {
        let logs = captured(|| async {
            let cache = service(&server, redact).await;
            cache.set("users:ada@example.com", &"a string", None).await;
            // The wrong type: a decode warning naming the key.
            assert_eq!(cache.get::<u64>("users:ada@example.com").await, None);
        });
        assert!(logs.contains("did not decode"), "{logs}");
        if redact {
            assert!(!logs.contains("ada@example.com"), "{logs}");
            assert!(logs.contains("users:#"), "{logs}");
        } else {
            assert!(logs.contains("users:ada@example.com"), "{logs}");
        }
    }
}

#[test]
fn a_prefix_with_a_colon_is_warned_about() {
    let server = RedisServer::start();
    for (prefix, warned) in [("app:users", true), ("app", false)] {
        let logs = captured(|| async {
            CacheService::builder()
                .redis_url(server.url())
                .prefix(prefix)
                .build()
                .await
                .unwrap();
        });
        assert_eq!(logs.contains("prefix contains `:`"), warned, "{logs}");
    }
}

#[tokio::test]
async fn a_ttl_redis_would_reject_is_refused_before_it_is_sent() {
    let server = RedisServer::start();
    let cache = service(&server, false).await;
    let too_long = MAX_TTL + Duration::from_secs(1);
    let error = cache.try_set("k", &1, Some(too_long)).await.unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(!cache.set("k", &1, Some(too_long)).await);
    let loaded = cache
        .get_or_load_with_status("k", Some(too_long), || async { Ok::<_, String>(2) })
        .await
        .unwrap();
    assert_eq!(loaded.value, 2);
    // Nothing was written, no lease was left behind, and Redis was never asked to misbehave.
    let mut raw = server.connection().await;
    assert!(!cachekit_tests::raw::exists(&mut raw, "logs:k").await);
    assert_eq!(cache.stats().errors, 0, "{:?}", cache.stats());
}
