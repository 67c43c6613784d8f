//! The invalidation index on a real Redis: patterns it answers remove exactly what a walk of the
//! keyspace would, without `SCAN`; lease markers are found; entries written before the index
//! existed are still removed; the index stays bounded under churn; a server that may evict it
//! makes patterns walk; and concurrent writers never leave an entry an invalidation should have
//! removed.

use cachekit::CacheService;
use cachekit::key::glob_match;
use cachekit_tests::{FaultProxy, RedisServer, raw, within};
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MINUTE: Option<Duration> = Some(Duration::from_secs(60));

async fn service(server: &RedisServer, prefix: &str) -> CacheService {
    service_at(server.url(), prefix).await
}

async fn service_at(url: String, prefix: &str) -> CacheService {
    CacheService::builder()
        .redis_url(url)
        .prefix(prefix)
        .build()
        .await
        .expect("service builds")
}

/// A service whose index is complete, so that patterns use it.
async fn indexed(server: &RedisServer, prefix: &str) -> CacheService {
    indexed_at(server.url(), prefix).await
}

async fn indexed_at(url: String, prefix: &str) -> CacheService {
    let cache = service_at(url, prefix).await;
    cache.rebuild_index().await.expect("rebuild the index");
    cache
}

/// The score of `member` in the sorted set `key`, if it is there.
async fn zscore(conn: &mut MultiplexedConnection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(conn)
        .await
        .expect("ZSCORE")
}

async fn zcard(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .expect("ZCARD")
}

/// Keys of every kind the index files differently, and patterns of every kind it answers.
const KEYS: &[&str] = &[
    "users:1",
    "users:12",
    "users:2:roles",
    "users",
    "users2:1",
    "roles:1",
    ":1",
    "users:*",
    "users:[1]",
    "a:b:c",
];
const PATTERNS: &[&str] = &[
    "users:*",
    "users:1*",
    "users:*:roles",
    "users:\\*",
    "users:\\[1\\]",
    "*",
    "u*",
    "users",
    ":*",
    "*:1",
    "users:?",
    "a:b:*",
    "nothing:*",
];

#[tokio::test]
async fn every_pattern_removes_what_a_walk_would_and_the_index_answers_without_scan() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    for pattern in PATTERNS {
        let cache = indexed(&server, "app").await;
        let other = service(&server, "other").await;
        for key in KEYS {
            assert!(cache.set(key, &key, MINUTE).await);
            assert!(other.set(key, &key, MINUTE).await);
        }
        let scans_before = raw::command_calls(&mut conn, "scan").await;
        let removed = cache
            .try_invalidate_pattern(pattern)
            .await
            .expect("invalidate");
        let walked = raw::command_calls(&mut conn, "scan").await > scans_before;
        let expected: Vec<&str> = KEYS
            .iter()
            .copied()
            .filter(|k| glob_match(pattern, k))
            .collect();
        assert_eq!(removed, expected.len() as u64, "{pattern}: {expected:?}");
        for key in KEYS {
            let present = raw::exists(&mut conn, &format!("app:{key}")).await;
            assert_eq!(
                present,
                !expected.contains(key),
                "app:{key} after {pattern}"
            );
            assert!(
                raw::exists(&mut conn, &format!("other:{key}")).await,
                "other:{key}"
            );
        }
        let answerable = pattern.starts_with("users:")
            || *pattern == "*"
            || *pattern == "a:b:*"
            || *pattern == ":*"
            || *pattern == "users"
            || *pattern == "nothing:*";
        assert_eq!(walked, !answerable, "{pattern}: walked the keyspace");
        cache.clear_all().await;
        other.clear_all().await;
    }
    assert_eq!(raw::keys(&mut conn, "app:*").await, Vec::<String>::new());
}

#[tokio::test]
async fn clear_all_through_the_index_removes_every_namespace_and_only_this_prefix() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    let other = indexed(&server, "app2").await;
    for i in 0..2500 {
        assert!(cache.set(&format!("ns{}:{i}", i % 7), &i, MINUTE).await);
    }
    assert!(cache.set("plain", &1, MINUTE).await);
    assert!(other.set("ns1:1", &1, MINUTE).await);
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(cache.try_clear_all().await.expect("clear_all"), 2501);
    assert_eq!(
        raw::command_calls(&mut conn, "scan").await,
        scans_before,
        "clear_all walked the keyspace"
    );
    assert!(raw::exists(&mut conn, "app2:ns1:1").await);
    assert_eq!(raw::keys(&mut conn, "app:*").await, Vec::<String>::new());
    // Drained namespaces leave nothing behind but the registry and the ready marker.
    let mut left = raw::keys(&mut conn, "app#*").await;
    left.sort();
    assert_eq!(left, ["app#ix-ready"]);
}

#[tokio::test]
async fn a_lease_taken_before_an_invalidation_is_found_by_it_and_its_fill_refused() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let loader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("users:7", MINUTE, || async move {
                    started_tx.send(()).expect("test waits");
                    finish_rx.await.expect("test finishes the load");
                    Ok::<_, std::io::Error>("loaded before the invalidation".to_string())
                })
                .await
        })
    };
    started_rx.await.expect("the loader starts");
    assert!(
        raw::exists(&mut conn, "app:users:7").await,
        "the lease marker is in Redis"
    );
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        1
    );
    assert_eq!(
        raw::command_calls(&mut conn, "scan").await,
        scans_before,
        "the index answered"
    );
    assert!(
        !raw::exists(&mut conn, "app:users:7").await,
        "the marker is gone"
    );
    finish_tx.send(()).expect("loader waits");
    let value = loader.await.expect("task").expect("the loader succeeds");
    assert_eq!(value, "loaded before the invalidation");
    assert!(
        !raw::exists(&mut conn, "app:users:7").await,
        "a value loaded before the invalidation was written after it"
    );
}

#[tokio::test]
async fn entries_written_before_the_index_are_removed_by_a_walk_then_by_the_rebuilt_index() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    // Entries as a version without the index wrote them: plain SET with a TTL.
    for i in 0..300 {
        raw::set_px(
            &mut conn,
            &format!("app:users:{i}"),
            "{}",
            Duration::from_secs(60),
        )
        .await;
    }
    let cache = service(&server, "app").await;
    // The index is not complete: the first invalidation walks, and starts a rebuild.
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:1*")
            .await
            .expect("invalidate"),
        111
    );
    assert!(
        raw::command_calls(&mut conn, "scan").await > scans_before,
        "an incomplete index is not used"
    );
    within(Duration::from_secs(30), "the background rebuild", async {
        while !raw::exists(&mut conn, "app#ix-ready").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        zcard(&mut conn, "app#ix:users").await,
        189,
        "the rebuild filed the rest"
    );
    // The in-process trust check is renewed within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        189
    );
    assert_eq!(
        raw::command_calls(&mut conn, "scan").await,
        scans_before,
        "the rebuilt index answered"
    );
    assert_eq!(
        raw::keys(&mut conn, "app:users:*").await,
        Vec::<String>::new()
    );

    // An explicit rebuild files what an older version wrote since.
    raw::set_px(&mut conn, "app:users:late", "{}", Duration::from_secs(60)).await;
    assert_eq!(cache.rebuild_index().await.expect("rebuild"), 1);
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        1
    );
}

#[tokio::test]
async fn a_prefix_with_a_colon_is_rebuilt_under_its_first_part() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    raw::set_px(&mut conn, "app:v2:users:1", "{}", Duration::from_secs(60)).await;
    let cache = service(&server, "app:v2").await;
    assert_eq!(cache.rebuild_index().await.expect("rebuild"), 1);
    assert!(raw::exists(&mut conn, "app#ix-ready").await);
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        1
    );
    assert_eq!(
        raw::command_calls(&mut conn, "scan").await,
        scans_before,
        "the index answered"
    );
    assert!(!raw::exists(&mut conn, "app:v2:users:1").await);
}

#[tokio::test]
async fn expired_and_removed_entries_leave_the_index() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    let ttl = Some(Duration::from_millis(20));
    const WRITES: u64 = 20_000;
    for i in 0..WRITES {
        assert!(cache.set(&format!("churn:{i}"), &i, ttl).await);
    }
    let after_churn = zcard(&mut conn, "app#ix:churn").await;
    // While trims find expired members, one write in 8 trims up to 128 (the earliest scored
    // first): once the churned entries expired, a few hundred more writes (about 50 trims)
    // empty the index of them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..400 {
        assert!(cache.set(&format!("churn:tail{i}"), &i, ttl).await);
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("app#ix:churn")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    let churned = members
        .iter()
        .filter(|m| !m.starts_with("churn:tail"))
        .count();
    eprintln!(
        "index size after {WRITES} writes with a 20 ms TTL: {after_churn} members right after; \
         after 400 more writes, {} (of which {churned} of the first {WRITES})",
        members.len()
    );
    assert!(
        after_churn < WRITES / 10,
        "{after_churn} of {WRITES} members left right after"
    );
    assert_eq!(churned, 0, "members of expired entries stayed");

    // A score is the writer's clock: one that is behind makes a live entry look expired, and
    // trimming checks the key before it drops the member.
    assert!(cache.set("skewed:1", &1, MINUTE).await);
    let () = redis::cmd("ZADD")
        .arg("app#ix:skewed")
        .arg(1)
        .arg("skewed:1")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    for i in 0..100 {
        assert!(cache.set(&format!("skewed:new{i}"), &i, ttl).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        cache
            .try_invalidate_pattern("skewed:*")
            .await
            .expect("invalidate"),
        1
    );
    assert!(!raw::exists(&mut conn, "app:skewed:1").await);

    // A namespace no longer written is emptied by other namespaces' writes, and forgotten.
    for i in 0..50 {
        assert!(cache.set(&format!("dead{i}:1"), &i, ttl).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..8000 {
        assert!(cache.set(&format!("live:{}", i % 10), &i, MINUTE).await);
    }
    let registered: Vec<String> = redis::cmd("SMEMBERS")
        .arg("app#ns")
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    let dead: Vec<&String> = registered.iter().filter(|n| n.contains("dead")).collect();
    assert_eq!(
        dead,
        Vec::<&String>::new(),
        "namespaces no longer written stay registered"
    );
    assert_eq!(
        raw::keys(&mut conn, "app#ix:dead*").await,
        Vec::<String>::new()
    );

    // A removed entry leaves it at once.
    assert!(cache.set("gone:1", &1, MINUTE).await);
    assert_eq!(zcard(&mut conn, "app#ix:gone").await, 1);
    assert!(cache.delete("gone:1").await);
    assert_eq!(zcard(&mut conn, "app#ix:gone").await, 0);
}

#[tokio::test]
async fn trims_grow_rare_while_they_find_nothing_and_frequent_again_once_entries_expire() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    // Entries that outlive the run: no trim finds anything, so trims back off to every 128th
    // write (one in 8 would be about 128 trims here).
    let before = raw::command_calls(&mut conn, "evalsha").await;
    for i in 0..1024 {
        assert!(cache.set(&format!("long:{}", i % 100), &i, MINUTE).await);
    }
    let trims = raw::command_calls(&mut conn, "evalsha").await - before;
    eprintln!("trim scripts for 1,024 writes of entries that live on: {trims}");
    // About 11 are expected (each write trims with a chance of 1 in 8, 16, ..., 128).
    assert!(
        (1..=40).contains(&trims),
        "{trims} trim scripts for 1,024 writes"
    );
    assert_eq!(zcard(&mut conn, "app#ix:long").await, 100);

    // Entries that expire as fast as they are written: the first trims that find them bring
    // trims back to one write in 8, and the index stays small.
    let ttl = Some(Duration::from_millis(20));
    const WRITES: u64 = 10_000;
    let before = raw::command_calls(&mut conn, "evalsha").await;
    for i in 0..WRITES {
        assert!(cache.set(&format!("churn:{i}"), &i, ttl).await);
    }
    let trims = raw::command_calls(&mut conn, "evalsha").await - before;
    let left = zcard(&mut conn, "app#ix:churn").await;
    eprintln!(
        "{WRITES} writes with a 20 ms TTL, after a back-off: {trims} trim scripts, {left} \
         members left"
    );
    // About one in 8 once trims find expired members; one in 128 would be about 80.
    assert!(
        trims > WRITES / 32,
        "{trims} trim scripts for {WRITES} writes"
    );
    assert!(left < WRITES / 10, "{left} of {WRITES} members left");
    assert_eq!(zcard(&mut conn, "app#ix:long").await, 100);
}

#[tokio::test]
async fn trims_back_off_while_they_only_score_rewritten_entries_again() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    assert!(cache.set("hot:first", &0, MINUTE).await);
    // 12,800 live entries whose members are scored long past, as `set` leaves the members of
    // entries rewritten after their first filed expiry: every trim finds 128 of them to score
    // again, and nothing to remove.
    const STALE: u64 = 12_800;
    for chunk in 0..STALE / 1_000 + 1 {
        let mut pipe = redis::pipe();
        for i in chunk * 1_000..((chunk + 1) * 1_000).min(STALE) {
            pipe.cmd("SET")
                .arg(format!("app:hot:{i}"))
                .arg(i)
                .arg("PX")
                .arg(60_000)
                .ignore()
                .cmd("ZADD")
                .arg("app#ix:hot")
                .arg(1)
                .arg(format!("hot:{i}"))
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("filing by hand");
    }
    // Scoring them again is not work for the pace: trims back off as for entries that live
    // on (about 11 trims expected here). Counted as work, it would hold them at one write in 8
    // until all were scored again (57 trims when tried).
    const WRITES: u64 = 1_000;
    let before = raw::command_calls(&mut conn, "evalsha").await;
    for i in 0..WRITES {
        assert!(cache.set(&format!("hot:new{}", i % 10), &i, MINUTE).await);
    }
    let trims = raw::command_calls(&mut conn, "evalsha").await - before;
    eprintln!("trim scripts for {WRITES} writes beside {STALE} members to score again: {trims}");
    assert!(
        (1..=WRITES / 32).contains(&trims),
        "{trims} trim scripts for {WRITES} writes"
    );
    // Every member is still there: scored again, none dropped.
    assert_eq!(zcard(&mut conn, "app#ix:hot").await, STALE + 11);
}

#[tokio::test]
async fn an_entry_rewritten_past_its_first_expiry_stays_filed_and_is_invalidated() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    // A rewrite keeps its member's lowest score, so an entry written again and again turns a
    // trim candidate once its first expiry passes. Other entries of the namespace expire
    // meanwhile, and keep trims coming: they score it again, and never drop it while it
    // lives (it is rewritten every 10 ms or so, with a TTL of 100 ms).
    let ttl = Some(Duration::from_millis(100));
    let written = Instant::now();
    assert!(cache.set("hot:1", &0, ttl).await);
    let first = zscore(&mut conn, "app#ix:hot", "hot:1")
        .await
        .expect("the entry was filed");
    assert!(cache.set("hot:1", &0, ttl).await);
    if written.elapsed() < Duration::from_millis(100) {
        // Its first expiry has not passed, so no trim has scored it again: the rewrite left it.
        assert_eq!(
            zscore(&mut conn, "app#ix:hot", "hot:1").await,
            Some(first),
            "a rewrite moved its member's score"
        );
    }
    let mut score = first;
    for i in 0..50 {
        assert!(cache.set("hot:1", &i, ttl).await);
        for j in 0..20 {
            let key = format!("hot:churn{i}-{j}");
            assert!(cache.set(&key, &j, Some(Duration::from_millis(5))).await);
        }
        match zscore(&mut conn, "app#ix:hot", "hot:1").await {
            Some(now) => score = now,
            // Gone only with its entry (a round slower than its TTL lets it expire).
            None => assert!(
                !raw::exists(&mut conn, "app:hot:1").await,
                "the member of a live entry left the index (round {i})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        score > first,
        "no trim scored it again ({score} <= {first})"
    );
    cache
        .try_invalidate_pattern("hot:*")
        .await
        .expect("invalidate");
    assert!(!raw::exists(&mut conn, "app:hot:1").await);
}

#[tokio::test]
async fn an_entry_filed_without_a_ttl_leaves_the_index_once_written_with_one_and_gone() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    // Written without a TTL (by hand, say) before the index existed: the rebuild files it last
    // in line for trimming.
    raw::set(&mut conn, "app:legacy:1", "1").await;
    let cache = indexed(&server, "app").await;
    let score = zscore(&mut conn, "app#ix:legacy", "legacy:1").await;
    assert_eq!(score, Some(f64::INFINITY));
    // Written again with a TTL, it expires; the trims of later writes find it gone.
    let ttl = Some(Duration::from_millis(20));
    assert!(cache.set("legacy:1", &1, ttl).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..200 {
        assert!(cache.set(&format!("legacy:n{i}"), &i, ttl).await);
    }
    let score = zscore(&mut conn, "app#ix:legacy", "legacy:1").await;
    assert_eq!(score, None, "the member of an expired entry stayed");
}

#[tokio::test]
async fn writes_that_alternate_between_namespaces_trim_each_namespace() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    // Other namespaces in the registry, for the trims' random look at another index.
    for ns in 0..10 {
        assert!(cache.set(&format!("other{ns}:1"), &ns, MINUTE).await);
    }
    // Every other write is to a namespace whose entries live on, and whose trims find nothing;
    // the writes between them are entries that expire at once. A trim that fell only on the
    // first kind (every 8th, 16th, ... write of the process, if counted) would leave the second
    // to grow.
    let ttl = Some(Duration::from_millis(20));
    const PAIRS: u64 = 10_000;
    for i in 0..PAIRS {
        assert!(cache.set(&format!("profile:{}", i % 100), &i, MINUTE).await);
        assert!(cache.set(&format!("rate:{i}"), &i, ttl).await);
    }
    let left = zcard(&mut conn, "app#ix:rate").await;
    eprintln!("index size after {PAIRS} short-lived writes, each after a long-lived one: {left}");
    assert!(left < PAIRS / 10, "{left} of {PAIRS} members left");
    assert_eq!(zcard(&mut conn, "app#ix:profile").await, 100);
}

#[tokio::test]
async fn a_server_that_may_evict_the_index_makes_patterns_walk() {
    let server = RedisServer::start_with_args(&[
        "--maxmemory",
        "512mb",
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    assert!(cache.set("users:1", &1, MINUTE).await);
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        1
    );
    assert!(
        raw::command_calls(&mut conn, "scan").await > scans_before,
        "the index was trusted on allkeys-lru"
    );
    let health = cache.health().await;
    let policy = health.server.and_then(|s| s.maxmemory_policy);
    assert_eq!(policy.as_deref(), Some("allkeys-lru"));

    // With a volatile policy the index cannot be evicted (it has no TTL), and is used.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");
    assert!(cache.set("users:1", &1, MINUTE).await);
    let scans_before = raw::command_calls(&mut conn, "scan").await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        1
    );
    assert_eq!(
        raw::command_calls(&mut conn, "scan").await,
        scans_before,
        "the index was not used on volatile-lru"
    );
}

#[tokio::test]
async fn an_index_key_of_a_foreign_type_is_replaced_and_patterns_walk_until_a_rebuild() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    assert!(cache.set("users:1", &1, MINUTE).await);
    // Something else overwrites the index: the entry it filed is no longer findable there.
    raw::set(&mut conn, "app#ix:users", "not an index").await;
    assert!(
        cache.set("users:2", &2, MINUTE).await,
        "the write replaces the foreign key"
    );
    assert!(
        !raw::exists(&mut conn, "app#ix-ready").await,
        "the index is marked incomplete"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        2
    );
    assert_eq!(
        raw::keys(&mut conn, "app:users:*").await,
        Vec::<String>::new()
    );

    // The same for the registry of namespaces that `clear_all` drains.
    cache.rebuild_index().await.expect("rebuild");
    assert!(cache.set("roles:1", &1, MINUTE).await);
    raw::set(&mut conn, "app#ns", "not a registry").await;
    assert!(
        cache.set("groups:1", &1, MINUTE).await,
        "the write replaces the foreign key"
    );
    assert!(
        !raw::exists(&mut conn, "app#ix-ready").await,
        "the index is marked incomplete"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cache.try_clear_all().await.expect("clear_all"), 2);
    assert_eq!(raw::keys(&mut conn, "app:*").await, Vec::<String>::new());
}

#[tokio::test]
async fn what_others_put_in_the_index_never_reaches_keys_outside_the_pattern() {
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = indexed(&server, "app").await;
    assert!(cache.set("users:1", &1, MINUTE).await);
    assert!(cache.set("config", &1, MINUTE).await);
    raw::set(&mut conn, "session:abc", "another program's").await;
    let zadd = |key: &'static str, member: &'static str| {
        redis::cmd("ZADD").arg(key).arg(1).arg(member).to_owned()
    };
    // A member of another namespace in the users index, a registry entry naming a key outside
    // the prefix, and a drain set left by an invalidation that stopped half-way.
    let () = zadd("app#ix:users", "config")
        .exec_async(&mut conn)
        .await
        .expect("ZADD");
    let () = redis::cmd("SADD")
        .arg("app#ns")
        .arg("session:abc")
        .exec_async(&mut conn)
        .await
        .expect("SADD");
    raw::set_px(&mut conn, "app:users:old", "{}", Duration::from_secs(60)).await;
    let () = zadd("app#drain:users", "users:old")
        .exec_async(&mut conn)
        .await
        .expect("ZADD");

    assert_eq!(
        cache
            .try_invalidate_pattern("users:*")
            .await
            .expect("invalidate"),
        2
    );
    assert!(!raw::exists(&mut conn, "app:users:1").await);
    assert!(
        !raw::exists(&mut conn, "app:users:old").await,
        "the stopped drain was finished"
    );
    assert!(
        raw::exists(&mut conn, "app:config").await,
        "a foreign member removed a key"
    );
    assert!(!raw::exists(&mut conn, "app#drain:users").await);
    assert_eq!(cache.try_clear_all().await.expect("clear_all"), 1);
    assert!(
        raw::exists(&mut conn, "session:abc").await,
        "clear_all left the prefix"
    );
}

/// Concurrent sets, fills, lease takers whose loads fail, and invalidations (of a whole
/// namespace and of part of it) from two services: after each invalidation returns, no entry it
/// matches may hold a value that was written, or whose load began, before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_outlive_an_invalidation_that_began_after_them() {
    const KEY_COUNT: u64 = 64;
    const INVALIDATIONS: usize = 300;
    let server = RedisServer::start();
    let fleet = [indexed(&server, "app").await, indexed(&server, "app").await];
    // Every value is a unique version; `marks` holds, per version, the clock reading after
    // which an invalidation must remove it: when its `set` returned, or when its load began
    // (its lease was taken before that).
    let clock = Arc::new(AtomicU64::new(1));
    let marks: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let (cache, clock, marks, done) = (
            fleet[w as usize % 2].clone(),
            clock.clone(),
            marks.clone(),
            done.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !done.load(Ordering::Relaxed) {
                n = n
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = format!("c:{}", (n >> 33) % KEY_COUNT);
                let version = clock.fetch_add(1, Ordering::SeqCst);
                match (n >> 20) % 3 {
                    0 => {
                        if cache.set(&key, &version, MINUTE).await {
                            let at = clock.fetch_add(1, Ordering::SeqCst);
                            marks.lock().unwrap().insert(version, at);
                        }
                    }
                    kind => {
                        let (clock, marks) = (clock.clone(), marks.clone());
                        let _ = cache
                            .get_or_load(&key, MINUTE, || async move {
                                let at = clock.fetch_add(1, Ordering::SeqCst);
                                marks.lock().unwrap().insert(version, at);
                                tokio::time::sleep(Duration::from_micros(200)).await;
                                if kind == 1 {
                                    Ok(version)
                                } else {
                                    Err("the load fails and gives the lease back")
                                }
                            })
                            .await;
                    }
                }
            }
        }));
    }
    let mut conn = server.connection().await;
    let keys: Vec<String> = (0..KEY_COUNT).map(|i| format!("app:c:{i}")).collect();
    let mut violations = Vec::new();
    let mut removed = 0;
    for i in 0..INVALIDATIONS {
        let pattern = if i % 2 == 0 { "c:*" } else { "c:1*" };
        let began = clock.fetch_add(1, Ordering::SeqCst);
        removed += fleet[i % 2]
            .try_invalidate_pattern(pattern)
            .await
            .expect("invalidate");
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("MGET");
        {
            let marks = marks.lock().unwrap();
            for (key, value) in keys.iter().zip(values) {
                let Some(version) = value.and_then(|v| serde_json::from_slice::<u64>(&v).ok())
                else {
                    continue;
                };
                if glob_match(&format!("app:{pattern}"), key)
                    && marks.get(&version).is_some_and(|&at| at < began)
                {
                    violations.push((key.clone(), version, pattern));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    eprintln!(
        "{INVALIDATIONS} invalidations removed {removed} entries amid {} writes; violations: {}",
        clock.load(Ordering::SeqCst) / 2,
        violations.len()
    );
    assert!(removed > 0, "the invalidations raced no writes");
    assert_eq!(
        violations,
        [],
        "entries outlived an invalidation that began after them"
    );
}

/// A connection lost in the middle of a write's request, just after its `SET`, leaves nothing
/// an invalidation through the index would miss: the entry is not stored, or stored and filed.
/// (A write sent as a plain pipeline, `SET` then `ZADD`, fails this: the entry stays, unfiled,
/// after the invalidation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_after_its_set_leaves_nothing_an_invalidation_misses() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let cache = indexed_at(proxy.url(), "cut").await;
    let mut conn = server.connection().await;

    // The write's `SET` as the service sends it; the proxy delivers it and cuts the rest.
    let write = redis::cmd("SET")
        .arg("cut:users:1")
        .arg(&b"\"old\""[..])
        .arg("PX")
        .arg(60_000)
        .get_packed_command();
    let tripwire = proxy.cut_after(&write);
    assert!(
        !cache.set("users:1", "old", MINUTE).await,
        "the cut write succeeded"
    );
    assert!(tripwire.has_fired(), "the write was not cut");
    let filed = zscore(&mut conn, "cut#ix:users", "users:1").await;
    assert!(
        !raw::exists(&mut conn, "cut:users:1").await || filed.is_some(),
        "the entry was stored and not filed"
    );

    within(
        Duration::from_secs(10),
        "an invalidation through the index",
        async {
            while cache.try_invalidate_pattern("users:*").await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert!(!raw::exists(&mut conn, "cut:users:1").await);
    assert_eq!(cache.get::<String>("users:1").await, None);
    assert!(cache.set("users:1", "new", MINUTE).await);
    assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("new"));
}

/// A write whose `SET` runs and whose filing is refused, by the server and then by the script
/// that repairs (its index of a foreign type, and a user without `EVALSHA`), is removed: the
/// caller gets the error, and no unfiled entry is left.
#[tokio::test]
async fn a_write_whose_filing_is_refused_is_not_left_unfiled() {
    let server = RedisServer::start();
    let mut admin = server.connection().await;
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "nofile", "on", ">pw", "~*", "+@all", "-evalsha"])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let cache = service_at(format!("redis://nofile:pw@{}", server.addr()), "refused").await;
    raw::set(&mut admin, "refused#ix:users", "not a sorted set").await;
    // A write whose transaction also draws a trim (one in 8) is refused whole, as this user may
    // not run scripts; the others run `SET` and have their `ZADD` refused, the case under test.
    // Ten writes all drawing a trim would take a chance of one in a billion.
    for _ in 0..10 {
        let error = cache
            .try_set("users:1", &1, MINUTE)
            .await
            .expect_err("a write that cannot be filed succeeded");
        assert!(!error.is_transport(), "{error}");
        assert!(
            !raw::exists(&mut admin, "refused:users:1").await,
            "an unfiled entry was left behind"
        );
    }
}
