//! Faults: Redis killed, paused, down at start-up, and restarted. A cache fault never fails
//! the caller, is counted, trips the circuit breaker, and the service recovers by itself.
//!
//! The harness's kill, pause and restart block their thread while they wait for the process, so
//! these tests run on a multi-threaded runtime and call them through `block_in_place`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachekit::backend::MemoryBackend;
use cachekit::{BreakerState, CacheService, Fallback};
use cachekit_tests::{RedisServer, init_tracing, within};

/// How long any single call may take before the test calls it hung. Generous: the calls under
/// test are bounded by timeouts of a few hundred milliseconds.
const CALL_BOUND: Duration = Duration::from_secs(2);
/// How long a recovery may take before the test calls it stuck.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Cool-down of the breaker in these tests.
const OPEN_FOR: Duration = Duration::from_millis(300);

async fn load<T>(calls: &AtomicUsize, value: T) -> Result<T, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(value)
}

fn kill(server: &RedisServer) {
    tokio::task::block_in_place(|| server.kill());
    assert!(!server.is_running());
}

fn restart(server: &RedisServer) {
    tokio::task::block_in_place(|| server.restart());
    assert!(server.is_running());
}

/// Calls `get_or_load_with_status` on `key` until it is served from the cache, failing the test
/// after [`RECOVERY_BOUND`]. Every call must return the expected value.
async fn until_hit(cache: &CacheService, key: &str, calls: &AtomicUsize, value: &str) {
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        let fetched = within(
            CALL_BOUND,
            "get_or_load",
            cache.get_or_load_with_status(key, None, || load(calls, value.to_string())),
        )
        .await
        .unwrap();
        assert_eq!(fetched.value, value);
        if fetched.from_cache {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no cache hit within {RECOVERY_BOUND:?} of Redis coming back; stats {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_use_falls_back_to_the_loader_and_recovers() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("killed")
        .circuit_breaker(2, OPEN_FOR)
        .build()
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);

    until_hit(&cache, "users:1", &calls, "Ada").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().errors, 0);

    kill(&server);
    for round in 1..=5 {
        let fetched = within(
            CALL_BOUND,
            "get_or_load",
            cache.get_or_load_with_status("users:1", None, || load(&calls, "Ada".to_string())),
        )
        .await
        .expect("a cache fault never fails the caller");
        assert_eq!(fetched.value, "Ada");
        assert!(!fetched.from_cache);
        assert_eq!(calls.load(Ordering::SeqCst), 1 + round);
    }
    let stats = cache.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert!(stats.fallbacks > 0, "{stats:?}");
    assert_eq!(stats.breaker, BreakerState::Open, "{stats:?}");

    // The plain methods degrade, the try_ ones say why.
    assert_eq!(
        within(CALL_BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );
    assert!(!within(CALL_BOUND, "set", cache.set("users:1", &"x", None)).await);
    assert!(
        within(CALL_BOUND, "try_get", cache.try_get::<String>("users:1"))
            .await
            .is_err()
    );
    let health = within(CALL_BOUND, "health", cache.health()).await;
    assert!(!health.connected);
    assert!(health.error.is_some());
    assert_eq!(health.server, None);

    // Hits resume by themselves once Redis is back (it comes back empty).
    restart(&server);
    until_hit(&cache, "users:1", &calls, "Ada").await;
    let stats = cache.stats();
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");
    assert!(within(CALL_BOUND, "health", cache.health()).await.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_return_within_the_timeout_while_redis_is_paused() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("paused")
        .timeout(Duration::from_millis(100))
        .admin_timeout(Duration::from_millis(300))
        .circuit_breaker(2, OPEN_FOR)
        .build()
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);
    until_hit(&cache, "users:1", &calls, "Ada").await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    tokio::task::block_in_place(|| server.pause());
    for round in 1..=5 {
        let value = within(
            CALL_BOUND,
            "get_or_load",
            cache.get_or_load("users:1", None, || load(&calls, "Ada".to_string())),
        )
        .await
        .unwrap();
        assert_eq!(value, "Ada");
        assert_eq!(calls.load(Ordering::SeqCst), 1 + round);
    }
    // Every other method returns too; the breaker may be open or probing by now, so also wait
    // out the cool-down so that these reach the paused server.
    tokio::time::sleep(OPEN_FOR).await;
    assert_eq!(
        within(CALL_BOUND, "get", cache.get::<String>("users:1")).await,
        None
    );
    tokio::time::sleep(OPEN_FOR).await;
    let error = within(CALL_BOUND, "try_get", cache.try_get::<String>("users:1"))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    tokio::time::sleep(OPEN_FOR).await;
    assert!(!within(CALL_BOUND, "set", cache.set("users:2", &"x", None)).await);
    tokio::time::sleep(OPEN_FOR).await;
    assert!(!within(CALL_BOUND, "delete", cache.delete("users:1")).await);
    tokio::time::sleep(OPEN_FOR).await;
    assert_eq!(
        within(
            CALL_BOUND,
            "invalidate_pattern",
            cache.invalidate_pattern("users:*")
        )
        .await,
        0
    );
    tokio::time::sleep(OPEN_FOR).await;
    assert_eq!(within(CALL_BOUND, "clear_all", cache.clear_all()).await, 0);
    tokio::time::sleep(OPEN_FOR).await;
    // The deletes above timed out: until they are applied, no read is served from Redis.
    let error = within(CALL_BOUND, "try_get", cache.try_get::<String>("users:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, cachekit::CacheError::InvalidationsPending),
        "{error}"
    );
    let health = within(CALL_BOUND, "health", cache.health()).await;
    assert!(!health.connected);
    assert!(health.error.is_some());
    let stats = cache.stats();
    assert!(stats.errors > 0, "{stats:?}");

    tokio::task::block_in_place(|| server.resume());
    until_hit(&cache, "users:1", &calls, "Ada").await;
    assert_eq!(cache.stats().breaker, BreakerState::Closed);
    // The data written before the pause is still there, and the connection is in step: each
    // answer belongs to its own command.
    for i in 0..20 {
        let key = format!("step:{i}");
        assert!(cache.set(&key, &i, None).await);
    }
    for i in 0..20 {
        assert_eq!(cache.get::<i32>(&format!("step:{i}")).await, Some(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_with_redis_down_builds_degraded_and_reconnects_by_itself() {
    init_tracing();
    let server = RedisServer::start();
    let url = server.url();
    kill(&server);

    let cache = within(
        CALL_BOUND,
        "build",
        CacheService::builder()
            .redis_url(&url)
            .prefix("late")
            .circuit_breaker(2, OPEN_FOR)
            .build(),
    )
    .await
    .expect("an unreachable Redis still builds");
    let stats = cache.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert_ne!(stats.breaker, BreakerState::Closed, "{stats:?}");

    let calls = AtomicUsize::new(0);
    for round in 1..=3 {
        let fetched = within(
            CALL_BOUND,
            "get_or_load",
            cache.get_or_load_with_status("k", None, || load(&calls, "v".to_string())),
        )
        .await
        .unwrap();
        assert_eq!((fetched.value.as_str(), fetched.from_cache), ("v", false));
        assert_eq!(calls.load(Ordering::SeqCst), round);
    }

    // Nothing calls the service now: the background reconnection alone closes the breaker.
    restart(&server);
    let deadline = Instant::now() + RECOVERY_BOUND;
    while cache.stats().breaker != BreakerState::Closed {
        assert!(
            Instant::now() < deadline,
            "the service did not reconnect within {RECOVERY_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_hit(&cache, "k", &calls, "v").await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(within(CALL_BOUND, "health", cache.health()).await.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_breaker_skips_redis_until_it_answers_again() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("breaker")
        .circuit_breaker(2, Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);
    until_hit(&cache, "k", &calls, "v").await;

    kill(&server);
    for _ in 0..5 {
        within(CALL_BOUND, "get", cache.get::<String>("k")).await;
        if cache.stats().breaker == BreakerState::Open {
            break;
        }
    }
    let opened = cache.stats();
    assert_eq!(opened.breaker, BreakerState::Open, "{opened:?}");

    // Open: nothing reaches Redis, so no new errors; every call is a counted fallback.
    for _ in 0..10 {
        assert_eq!(
            within(
                CALL_BOUND,
                "get_or_load",
                cache.get_or_load("k", None, || load(&calls, "v".to_string()))
            )
            .await
            .unwrap(),
            "v"
        );
        assert!(!within(CALL_BOUND, "set", cache.set("k", &"v", None)).await);
        assert!(!within(CALL_BOUND, "delete", cache.delete("k")).await);
        assert_eq!(within(CALL_BOUND, "clear_all", cache.clear_all()).await, 0);
    }
    let skipped = cache.stats();
    assert_eq!(skipped.errors, opened.errors, "{skipped:?}");
    assert!(
        skipped.fallbacks >= opened.fallbacks + 40,
        "{opened:?} {skipped:?}"
    );
    // The deletes skipped above are remembered: reads wait for them, whatever the breaker.
    assert!(matches!(
        within(CALL_BOUND, "try_get", cache.try_get::<String>("k")).await,
        Err(cachekit::CacheError::InvalidationsPending)
    ));
    assert!(
        within(CALL_BOUND, "try_set", cache.try_set("k", &"v", None))
            .await
            .unwrap_err()
            .is_circuit_open()
    );
    assert!(
        within(CALL_BOUND, "try_delete", cache.try_delete("k"))
            .await
            .unwrap_err()
            .is_circuit_open()
    );
    assert!(
        within(
            CALL_BOUND,
            "try_invalidate",
            cache.try_invalidate_pattern("*")
        )
        .await
        .unwrap_err()
        .is_circuit_open()
    );
    assert!(
        within(CALL_BOUND, "try_clear_all", cache.try_clear_all())
            .await
            .unwrap_err()
            .is_circuit_open()
    );

    // health() measures a real round trip whatever the breaker says, and never changes it:
    // only the breaker's own probe, after the cool-down, closes it.
    assert!(!within(CALL_BOUND, "health", cache.health()).await.connected);
    assert_eq!(cache.stats().breaker, BreakerState::Open);
    restart(&server);
    let deadline = Instant::now() + RECOVERY_BOUND;
    while !within(CALL_BOUND, "health", cache.health()).await.connected {
        assert!(Instant::now() < deadline, "health never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        cache.stats().breaker,
        BreakerState::Closed,
        "health closed it"
    );
    // The deletes skipped while the breaker was open were remembered: the first read after
    // the cool-down applies them (as the breaker's probe) before it reads.
    let read = loop {
        match within(CALL_BOUND, "try_get", cache.try_get::<String>("k")).await {
            Ok(read) => break read,
            Err(e) => assert!(e.is_skipped(), "{e}"),
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(read, None);
    assert_eq!(cache.stats().breaker, BreakerState::Closed);
    assert!(cache.stats().invalidations_replayed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_methods_report_backend_failures() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("try")
        // A breaker that never opens here: every call reaches the dead server.
        .circuit_breaker(1000, OPEN_FOR)
        .build()
        .await
        .unwrap();
    kill(&server);

    let error = within(CALL_BOUND, "try_get", cache.try_get::<String>("k"))
        .await
        .unwrap_err();
    assert!(!error.is_circuit_open() && !error.is_decode(), "{error}");
    assert!(
        within(CALL_BOUND, "try_set", cache.try_set("k", &1, None))
            .await
            .is_err()
    );
    assert!(
        within(CALL_BOUND, "try_delete", cache.try_delete("k"))
            .await
            .is_err()
    );
    assert!(
        within(
            CALL_BOUND,
            "try_invalidate",
            cache.try_invalidate_pattern("*")
        )
        .await
        .is_err()
    );
    assert!(
        within(CALL_BOUND, "try_clear_all", cache.try_clear_all())
            .await
            .is_err()
    );
    assert_eq!(within(CALL_BOUND, "get", cache.get::<i32>("k")).await, None);
    assert!(!within(CALL_BOUND, "set", cache.set("k", &1, None)).await);
    assert!(!within(CALL_BOUND, "delete", cache.delete("k")).await);
    assert_eq!(
        within(CALL_BOUND, "invalidate", cache.invalidate_pattern("*")).await,
        0
    );
    assert_eq!(within(CALL_BOUND, "clear_all", cache.clear_all()).await, 0);
    let failed: Result<i32, String> = within(
        CALL_BOUND,
        "get_or_load",
        cache.get_or_load("k", None, || async { Err("db down too".to_string()) }),
    )
    .await;
    assert_eq!(
        failed,
        Err("db down too".to_string()),
        "the loader's error passes through"
    );

    let stats = cache.stats();
    assert!(stats.errors >= 10, "{stats:?}");
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert_eq!((stats.hits, stats.sets), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_fallback_serves_during_an_outage_and_is_cleared_after() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("fallback")
        .circuit_breaker(2, OPEN_FOR)
        .fallback(Fallback::memory())
        .build()
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);
    let get_or_load = |value: &'static str| {
        let calls = &calls;
        let cache = &cache;
        async move {
            within(
                CALL_BOUND,
                "get_or_load",
                cache.get_or_load_with_status("k", None, || load(calls, value.to_string())),
            )
            .await
            .unwrap()
        }
    };

    kill(&server);
    let first = get_or_load("v1").await;
    assert_eq!((first.value.as_str(), first.from_cache), ("v1", false));
    let second = get_or_load("v2").await;
    assert_eq!(
        (second.value.as_str(), second.from_cache),
        ("v1", true),
        "served from the in-process fallback"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        within(CALL_BOUND, "get", cache.get::<String>("k"))
            .await
            .as_deref(),
        Some("v1")
    );
    let stats = cache.stats();
    assert!(stats.errors > 0 && stats.fallbacks > 0, "{stats:?}");

    // Invalidations made here reach the fallback too.
    assert_eq!(
        within(CALL_BOUND, "invalidate", cache.invalidate_pattern("*")).await,
        0
    );
    let third = get_or_load("v3").await;
    assert_eq!((third.value.as_str(), third.from_cache), ("v3", false));
    assert!(!within(CALL_BOUND, "delete", cache.delete("k")).await);
    let fourth = get_or_load("v4").await;
    assert_eq!((fourth.value.as_str(), fourth.from_cache), ("v4", false));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Redis comes back: the breaker closes by itself on the next calls...
    restart(&server);
    let deadline = Instant::now() + RECOVERY_BOUND;
    loop {
        within(CALL_BOUND, "get", cache.get::<String>("probe")).await;
        if cache.stats().breaker == BreakerState::Closed {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and the fallback was emptied then: in the next outage, the value from the last one
    // (`v4`) is not served.
    kill(&server);
    let fifth = get_or_load("v5").await;
    assert_eq!((fifth.value.as_str(), fifth.from_cache), ("v5", false));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_entries_live_no_longer_than_the_fallback_ttl() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url())
        .prefix("fallback-ttl")
        .circuit_breaker(2, OPEN_FOR)
        .fallback(Fallback::Memory {
            ttl: Duration::from_millis(300),
            max_bytes: MemoryBackend::DEFAULT_MAX_BYTES,
        })
        .build()
        .await
        .unwrap();
    let calls = AtomicUsize::new(0);
    kill(&server);

    let long = Some(Duration::from_secs(3600));
    let value = cache
        .get_or_load("k", long, || load(&calls, 1))
        .await
        .unwrap();
    assert_eq!(value, 1);
    assert_eq!(cache.get::<i32>("k").await, Some(1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.get::<i32>("k").await, None);
    let value = cache
        .get_or_load("k", long, || load(&calls, 2))
        .await
        .unwrap();
    assert_eq!(value, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
