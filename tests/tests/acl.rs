//! An ACL user limited to the service's prefix and to the commands cachekit needs
//! ([`cachekit::acl_rules`]) runs every operation: the server refuses nothing (its `ACL LOG`
//! stays empty) and the service counts no error.

use std::time::Duration;

use cachekit::CacheService;
use cachekit_tests::{RedisServer, raw, within};

const BOUND: Duration = Duration::from_secs(10);
const PREFIX: &str = "acl";

async fn acl_log(conn: &mut redis::aio::MultiplexedConnection) -> Vec<redis::Value> {
    redis::cmd("ACL")
        .arg("LOG")
        .query_async(conn)
        .await
        .expect("ACL LOG")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_the_prefix_and_the_listed_commands_runs_everything() {
    cachekit_tests::init_tracing();
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    let rules = cachekit::acl_rules(PREFIX);
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-password");
    for rule in &rules {
        setuser.arg(rule);
    }
    let () = setuser
        .query_async(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("ACL SETUSER app {rules:?}: {e}"));

    for (db, local) in [(0, false), (3, true)] {
        let mut builder = CacheService::builder()
            .redis_url(format!("redis://app:app-password@{}/{db}", server.addr()))
            .prefix(PREFIX)
            .refresh_ahead(100.0)
            .stale_if_error(Duration::from_secs(60));
        if local {
            builder = builder.local_tier(Duration::from_secs(60));
        }
        let cache = within(BOUND, "build", builder.build()).await.unwrap();
        let what = format!("db {db}, tier {local}");

        let health = cache.health().await;
        assert!(health.connected, "{what}: {:?}", health.error);
        assert_eq!(health.error, None, "{what}");

        for id in 0..20 {
            assert!(cache.set(&format!("users:{id}"), &id, None).await, "{what}");
        }
        assert_eq!(cache.get::<u32>("users:3").await, Some(3), "{what}");
        assert_eq!(cache.get::<u32>("users:3").await, Some(3), "{what}");
        let loaded = cache
            .get_or_load("orders:1", None, || async { Ok::<_, std::io::Error>(9u32) })
            .await
            .unwrap();
        assert_eq!(loaded, 9);
        // Refresh-ahead (the claim, the refill) and stale-if-error (a value past its TTL).
        let ttl = Some(Duration::from_millis(100));
        let slow = |v: u32| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(v)
        };
        // The draw is random (a load of 20 ms at beta 100 against at most 100 ms left draws
        // about 19 times in 20): read until one refreshes, each time from a fresh entry.
        let refreshes = cache.stats().refreshes;
        for attempt in 0.. {
            cache.delete("orders:2").await;
            cache
                .get_or_load("orders:2", ttl, || slow(1))
                .await
                .unwrap();
            let refreshed = cache
                .get_or_load_with_status("orders:2", ttl, || slow(2))
                .await
                .unwrap();
            if cache.stats().refreshes > refreshes {
                assert_eq!(
                    (refreshed.value, refreshed.from_cache),
                    (2, false),
                    "{what}: a refresh"
                );
                break;
            }
            assert!(attempt < 50, "{what}: no refresh in 50 draws");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let failing = || async { Err::<u32, _>(std::io::Error::other("database down")) };
        let stale = cache
            .get_or_load_with_status("orders:2", ttl, failing)
            .await
            .unwrap();
        assert_eq!((stale.value, stale.stale), (2, true), "{what}");
        assert!(cache.delete("orders:2").await, "{what}");
        assert!(cache.delete("users:0").await, "{what}");
        // Patterns walk the keyspace until the index is complete, then use it: both run.
        assert_eq!(cache.invalidate_pattern("carts:?").await, 0, "{what}");
        cache.rebuild_index().await.expect("the index rebuilds");
        // A glob inside a namespace (the index's ZSCAN), one across namespaces (a SCAN walk),
        // a whole namespace (the index), and everything.
        assert_eq!(cache.invalidate_pattern("users:1?").await, 10, "{what}");
        assert_eq!(cache.invalidate_pattern("*s:1").await, 2, "{what}");
        assert_eq!(cache.invalidate_pattern("users:*").await, 8, "{what}");
        assert_eq!(cache.clear_all().await, 0, "{what}");
        assert!(cache.set("users:1", &1u32, None).await);
        assert_eq!(cache.clear_all().await, 1, "{what}");

        let health = cache.health().await;
        assert_eq!(health.error, None, "{what}");
        assert!(health.server.is_some(), "{what}");
        let stats = cache.stats();
        assert_eq!(stats.errors, 0, "{what}: {stats:?}");
        if local {
            // The tier serves only once its tracking connection (`CLIENT TRACKING`) is up.
            let deadline = tokio::time::Instant::now() + BOUND;
            while cache.stats().local_hits == 0 {
                assert!(cache.set("users:1", &1u32, None).await);
                for _ in 0..2 {
                    assert_eq!(cache.get::<u32>("users:1").await, Some(1), "{what}");
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: the tier never served"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Nothing the service did was refused by the server.
    let log = acl_log(&mut admin).await;
    assert!(log.is_empty(), "the server refused: {log:?}");
    assert!(
        raw::keys(&mut admin, "*")
            .await
            .iter()
            .all(|k| k.starts_with("acl"))
    );
}

/// The README's `ACL SETUSER` line lists exactly the commands of [`cachekit::ACL_COMMANDS`].
#[test]
fn the_readme_lists_the_acl_commands() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("ACL SETUSER app on")
        .expect("the README shows the ACL SETUSER line");
    let end = start
        + readme[start..]
            .find("```")
            .expect("the line's code block ends");
    let listed: Vec<&str> = readme[start..end]
        .split_whitespace()
        .filter(|word| word.starts_with('+'))
        .collect();
    assert_eq!(listed, cachekit::ACL_COMMANDS);
    let rules = cachekit::acl_rules("app");
    for rule in &rules[..5] {
        assert!(readme[start..end].contains(rule.as_str()), "{rule}");
    }
}
