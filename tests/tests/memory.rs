//! The embedded in-process store through `CacheService`, and a differential test of its glob
//! dialect against a real Redis: for many keys and patterns, `invalidate_pattern` on
//! `CacheService::memory()` removes exactly the keys that Redis's `SCAN MATCH` finds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachekit::key::{escape_glob, glob_match};
use cachekit::{BackendKind, BreakerState, CacheService, DEFAULT_PREFIX, DEFAULT_TTL};
use cachekit_tests::{RedisServer, init_tracing, raw};
use redis::aio::MultiplexedConnection;

async fn load<T>(calls: &AtomicUsize, value: T) -> Result<T, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(value)
}

#[tokio::test]
async fn every_method_on_the_embedded_store() {
    init_tracing();
    let cache = CacheService::memory();
    assert_eq!(cache.prefix(), DEFAULT_PREFIX);
    assert_eq!(cache.default_ttl(), DEFAULT_TTL);

    assert_eq!(cache.get::<String>("users:1").await, None);
    assert!(cache.set("users:1", &"Ada", None).await);
    assert!(cache.set("users:2", "Grace", None).await);
    cache.try_set("users:10", &"Edsger", None).await.unwrap();
    cache
        .try_set("roles:1", &vec!["admin"], None)
        .await
        .unwrap();
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("Ada"));
    assert_eq!(
        cache.try_get::<Vec<String>>("roles:1").await.unwrap(),
        Some(vec!["admin".to_string()])
    );

    assert!(cache.delete("users:1").await);
    assert!(!cache.delete("users:1").await);
    assert!(!cache.try_delete("users:1").await.unwrap());
    assert_eq!(cache.try_get::<String>("users:1").await.unwrap(), None);

    assert_eq!(cache.invalidate_pattern("users:?").await, 1);
    assert_eq!(cache.try_invalidate_pattern("users:*").await.unwrap(), 1);
    assert_eq!(cache.invalidate_pattern("users:*").await, 0);
    assert!(cache.set("a", &1, None).await);
    assert_eq!(cache.clear_all().await, 2);
    assert_eq!(cache.try_clear_all().await.unwrap(), 0);
    assert_eq!(cache.get::<Vec<String>>("roles:1").await, None);

    let error = cache
        .try_set("zero", &1, Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(error.is_config(), "{error}");

    let stats = cache.stats();
    assert_eq!(stats.backend, BackendKind::Memory);
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert_eq!((stats.hits, stats.misses), (2, 3));
    assert_eq!((stats.sets, stats.deletes, stats.invalidations), (5, 3, 5));
    assert_eq!(
        (stats.errors, stats.fallbacks, stats.decode_errors),
        (0, 0, 0)
    );
    assert_eq!(stats.hit_rate(), 0.4);

    let health = cache.health().await;
    assert_eq!(health.backend, BackendKind::Memory);
    assert!(health.connected);
    assert!(health.latency_us.is_some());
    assert_eq!(
        (health.endpoint, health.error, health.server),
        (None, None, None)
    );
}

#[tokio::test]
async fn get_or_load_on_the_embedded_store() {
    init_tracing();
    let cache = CacheService::memory();
    let calls = AtomicUsize::new(0);
    let first = cache
        .get_or_load_with_status("k", None, || load(&calls, 1))
        .await
        .unwrap();
    let second = cache
        .get_or_load_with_status("k", None, || load(&calls, 2))
        .await
        .unwrap();
    assert_eq!((first.value, first.from_cache), (1, false));
    assert_eq!((second.value, second.from_cache), (1, true));
    assert_eq!(
        cache.get_or_load("k", None, || load(&calls, 3)).await,
        Ok(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let failed: Result<i32, String> = cache
        .get_or_load("e", None, || async { Err("db down".to_string()) })
        .await;
    assert_eq!(failed, Err("db down".to_string()));
    assert_eq!(cache.get::<i32>("e").await, None, "errors are not cached");
}

#[tokio::test]
async fn entries_expire_on_the_embedded_store() {
    init_tracing();
    let cache = CacheService::builder()
        .memory(1 << 20)
        .default_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    assert!(cache.set("default", &1, None).await);
    assert!(
        cache
            .set("short", &2, Some(Duration::from_millis(300)))
            .await
    );
    assert!(cache.set("long", &3, Some(Duration::from_secs(60))).await);
    assert_eq!(cache.get::<i32>("short").await, Some(2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.get::<i32>("default").await, None);
    assert_eq!(cache.get::<i32>("short").await, None);
    assert_eq!(cache.get::<i32>("long").await, Some(3));
    // Expired entries are not counted by a pattern removal.
    assert_eq!(cache.clear_all().await, 1);
}

#[tokio::test]
async fn undecodable_values_are_misses_and_are_removed_from_the_embedded_store() {
    init_tracing();
    let cache = CacheService::memory();
    assert!(cache.set("n", &"not a number", None).await);
    assert_eq!(cache.get::<u64>("n").await, None);
    assert_eq!(cache.stats().decode_errors, 1);
    assert_eq!(
        cache.get::<String>("n").await,
        None,
        "the entry was removed"
    );

    assert!(cache.set("n", &"not a number", None).await);
    let error = cache.try_get::<u64>("n").await.unwrap_err();
    assert!(error.is_decode(), "{error}");
    assert_eq!(cache.try_get::<String>("n").await.unwrap(), None);
    let stats = cache.stats();
    assert_eq!((stats.decode_errors, stats.errors), (2, 0));
}

#[tokio::test]
async fn the_embedded_store_is_bounded() {
    init_tracing();
    let cache = CacheService::builder()
        .memory(64 * 1024)
        .build()
        .await
        .unwrap();
    let value = "x".repeat(1000);
    for i in 0..1000 {
        cache.set(&format!("k{i}"), &value, None).await;
    }
    let mut held = 0;
    for i in 0..1000 {
        if cache.get::<String>(&format!("k{i}")).await.is_some() {
            held += 1;
        }
    }
    // About 1 MB written into a 64 KiB store: most of it must be gone.
    assert!(held < 200, "{held} of 1000 one-kilobyte entries held");
}

#[tokio::test]
async fn services_on_the_embedded_store_are_separate() {
    init_tracing();
    let a = CacheService::memory();
    let b = CacheService::memory();
    assert!(a.set("k", &1, None).await);
    assert_eq!(b.get::<i32>("k").await, None);
    let a2 = a.clone();
    assert_eq!(a2.get::<i32>("k").await, Some(1), "clones share the store");
}

// ----- the glob dialect against Redis ----------------------------------------------------------

/// Logical keys, chosen to exercise every glob feature; all are stored under the memory
/// service's default prefix.
const KEYS: &[&str] = &[
    "",
    "a",
    "b",
    "c",
    "d",
    "A",
    "ab",
    "abc",
    "abd",
    "acb",
    "aXb",
    "a:b",
    "a-b",
    "a*b",
    "a?b",
    "a[b",
    "a]b",
    "a\\b",
    "a^b",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "^",
    "-",
    "!",
    "users",
    "users:",
    "users:1",
    "users:2",
    "users:10",
    "users:1:posts",
    "Users:1",
    "user:1",
    "é",
    "aé",
    "日本",
];

/// Patterns, relative to the prefix: wildcards, classes, negation, ranges in both orders,
/// escapes, unterminated classes and odd corners of Redis's `stringmatchlen`.
const PATTERNS: &[&str] = &[
    "*",
    "**",
    "?",
    "??",
    "???",
    "a*",
    "*b",
    "a*b",
    "a?b",
    "*:*",
    "[abc]",
    "[^a]",
    "[^abc]",
    "[a-c]",
    "[c-a]",
    "[^a-c]",
    "a[a-c]*",
    "a[^b]*",
    "[A-Z]*",
    "[!a]",
    "a\\*b",
    "a\\?b",
    "a\\[b",
    "a\\]b",
    "a\\\\b",
    "\\*",
    "\\?",
    "\\[",
    "\\a",
    "[\\]]",
    "[]]",
    "[\\^]",
    "[a-]",
    "[-a]",
    "a[*]b",
    "a[?]b",
    "[",
    "a[",
    "a[b",
    "[^",
    "[a-c",
    "a\\",
    "\\",
    "users:*",
    "users:?",
    "users:??",
    "users:[12]",
    "users:[^1]*",
    "users:1*",
    "users\\:1",
    "user*:1",
    "*s:1*",
    "*a*a*",
    "é",
    "a?",
    "a??",
    "[é]",
    "日*",
];

/// The keys under `prefix:` that Redis's `SCAN MATCH prefix:pattern` returns, without the
/// prefix.
async fn redis_matches(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    pattern: &str,
) -> BTreeSet<String> {
    let physical = format!("{}:{pattern}", escape_glob(prefix));
    raw::keys(conn, &physical)
        .await
        .into_iter()
        .map(|key| {
            key.strip_prefix(&format!("{prefix}:"))
                .expect("SCAN returned a key outside the prefix")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn glob_semantics_match_redis_scan_match() {
    init_tracing();
    let server = RedisServer::start();
    let mut raw = server.connection().await;
    let all: BTreeSet<String> = KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(all.len(), KEYS.len(), "keys are distinct");

    let mut pipe = redis::pipe();
    for key in KEYS {
        pipe.cmd("SET")
            .arg(format!("{DEFAULT_PREFIX}:{key}"))
            .arg(1)
            .ignore();
    }
    // Keys outside the prefix that loose patterns would reach.
    for key in ["a", "cachekit", "cachekitx:a", "other:users:1"] {
        pipe.cmd("SET").arg(key).arg(1).ignore();
    }
    let () = pipe.query_async(&mut raw).await.unwrap();

    let mut mismatches = Vec::new();
    for pattern in PATTERNS {
        let expected = redis_matches(&mut raw, DEFAULT_PREFIX, pattern).await;

        // The matcher itself.
        let physical_pattern = format!("{DEFAULT_PREFIX}:{pattern}");
        let by_glob_match: BTreeSet<String> = all
            .iter()
            .filter(|key| glob_match(&physical_pattern, &format!("{DEFAULT_PREFIX}:{key}")))
            .cloned()
            .collect();
        if by_glob_match != expected {
            mismatches.push(format!(
                "glob_match {pattern:?}: redis {expected:?}, cachekit {by_glob_match:?}"
            ));
        }

        // The embedded store through the service: removes exactly those keys.
        let cache = CacheService::memory();
        for key in KEYS {
            assert!(cache.set(key, &1, None).await);
        }
        let removed = cache.invalidate_pattern(pattern).await;
        let mut remaining = BTreeSet::new();
        for key in KEYS {
            if cache.get::<i32>(key).await.is_some() {
                remaining.insert(key.to_string());
            }
        }
        let removed_keys: BTreeSet<String> = all.difference(&remaining).cloned().collect();
        if removed_keys != expected || removed != expected.len() as u64 {
            mismatches.push(format!(
                "memory invalidate_pattern {pattern:?}: redis {expected:?}, \
                 memory removed {removed} = {removed_keys:?}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // The test is only as good as its patterns: they must tell the keys apart.
    let mut distinct = BTreeSet::new();
    for pattern in PATTERNS {
        distinct.insert(redis_matches(&mut raw, DEFAULT_PREFIX, pattern).await);
    }
    assert!(
        distinct.len() >= PATTERNS.len() / 2,
        "only {} distinct outcomes",
        distinct.len()
    );
}

#[tokio::test]
async fn pattern_removal_counts_agree_between_redis_and_the_embedded_store() {
    init_tracing();
    let server = RedisServer::start();
    let redis_cache = CacheService::builder()
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let mut raw = server.connection().await;
    for pattern in PATTERNS {
        let memory_cache = CacheService::memory();
        for key in KEYS {
            assert!(redis_cache.set(key, &1, None).await);
            assert!(memory_cache.set(key, &1, None).await);
        }
        let expected = redis_matches(&mut raw, DEFAULT_PREFIX, pattern).await;
        let from_redis = redis_cache.invalidate_pattern(pattern).await;
        let from_memory = memory_cache.invalidate_pattern(pattern).await;
        assert_eq!(from_redis, expected.len() as u64, "redis, {pattern:?}");
        assert_eq!(from_memory, from_redis, "memory vs redis, {pattern:?}");
        for key in KEYS {
            assert_eq!(
                redis_cache.get::<i32>(key).await.is_some(),
                memory_cache.get::<i32>(key).await.is_some(),
                "{key:?} after {pattern:?}"
            );
        }
    }
}
