//! Every `CacheService` method against a private `redis-server` per test: reads, writes,
//! deletes, patterns, TTLs, prefixes, foreign values, databases, credentials, configuration,
//! statistics and health.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachekit::{BackendKind, BreakerState, CacheConfig, CacheService, DEFAULT_PREFIX, DEFAULT_TTL};
use cachekit_tests::logs::Captured;
use cachekit_tests::{RedisServer, init_tracing, raw};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user {id}"),
        roles: vec!["admin".into(), "editor".into()],
    }
}

async fn service(server: &RedisServer, prefix: &str) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(prefix)
        .build()
        .await
        .expect("a valid configuration builds")
}

/// A loader that counts its calls.
async fn load<T>(calls: &AtomicUsize, value: T) -> Result<T, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(value)
}

// ----- reads and writes ----------------------------------------------------------------------

#[tokio::test]
async fn set_then_get_round_trips_and_stores_plain_json() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "svc").await;
    let mut raw = server.connection().await;

    assert!(cache.set("users:1", &user(1), None).await);
    assert_eq!(cache.get::<User>("users:1").await, Some(user(1)));

    // The physical key is `{prefix}:{key}` and its value is the JSON of the value, readable by
    // redis-cli and by services in other languages.
    let bytes = raw::get::<Option<Vec<u8>>>(&mut raw, "svc:users:1")
        .await
        .expect("stored under the prefix");
    let stored: serde_json::Value = serde_json::from_slice(&bytes).expect("plain JSON");
    assert_eq!(
        stored,
        json!({"id": 1, "name": "user 1", "roles": ["admin", "editor"]})
    );
    assert!(
        !raw::exists(&mut raw, "users:1").await,
        "never stored unprefixed"
    );

    // And JSON written by someone else reads back.
    raw::set(
        &mut raw,
        "svc:users:7",
        br#"{"id":7,"name":"Ada","roles":["admin"]}"#,
    )
    .await;
    let ada = User {
        id: 7,
        name: "Ada".into(),
        roles: vec!["admin".into()],
    };
    assert_eq!(cache.get::<User>("users:7").await, Some(ada));

    // Unsized values and other shapes.
    assert!(cache.set("greeting", "hello", None).await);
    assert_eq!(
        cache.get::<String>("greeting").await.as_deref(),
        Some("hello")
    );
    assert_eq!(
        raw::get::<Option<Vec<u8>>>(&mut raw, "svc:greeting")
            .await
            .as_deref(),
        Some(&b"\"hello\""[..])
    );
    assert!(cache.set("list", &[1u8, 2, 3][..], None).await);
    assert_eq!(cache.get::<Vec<u8>>("list").await, Some(vec![1, 2, 3]));
    assert_eq!(cache.get::<User>("absent").await, None);

    // Overwriting replaces the value.
    assert!(cache.set("users:1", &user(2), None).await);
    assert_eq!(cache.get::<User>("users:1").await, Some(user(2)));
}

#[tokio::test]
async fn try_variants_return_results() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "try").await;
    let mut raw = server.connection().await;

    assert_eq!(cache.try_get::<User>("users:1").await.unwrap(), None);
    cache.try_set("users:1", &user(1), None).await.unwrap();
    cache.try_set("users:2", &user(2), None).await.unwrap();
    cache.try_set("roles:1", &"admin", None).await.unwrap();
    assert_eq!(
        cache.try_get::<User>("users:1").await.unwrap(),
        Some(user(1))
    );

    assert!(cache.try_delete("users:1").await.unwrap());
    assert!(!cache.try_delete("users:1").await.unwrap());
    assert_eq!(cache.try_get::<User>("users:1").await.unwrap(), None);

    assert_eq!(cache.try_invalidate_pattern("users:*").await.unwrap(), 1);
    assert_eq!(cache.try_invalidate_pattern("users:*").await.unwrap(), 0);
    raw::set(&mut raw, "outside", b"1").await;
    assert_eq!(cache.try_clear_all().await.unwrap(), 1);
    assert_eq!(cache.try_clear_all().await.unwrap(), 0);
    assert!(raw::exists(&mut raw, "outside").await);

    // A zero TTL is a configuration error, and nothing is written.
    let error = cache
        .try_set("zero", &1, Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(!cache.set("zero", &1, Some(Duration::ZERO)).await);
    assert!(!raw::exists(&mut raw, "try:zero").await);

    // A value serde_json cannot encode (a map with non-string keys) is an error, not a panic.
    let unencodable: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    let error = cache
        .try_set("unencodable", &unencodable, None)
        .await
        .unwrap_err();
    assert!(!error.is_config() && !error.is_decode(), "{error}");
    assert!(!cache.set("unencodable", &unencodable, None).await);
    assert!(!raw::exists(&mut raw, "try:unencodable").await);
    assert_eq!(
        cache.stats().errors,
        0,
        "caller data is not a backend fault"
    );
}

#[tokio::test]
async fn delete_reports_whether_the_key_existed() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "del").await;
    let mut raw = server.connection().await;

    assert!(cache.set("k", &1, None).await);
    assert!(raw::exists(&mut raw, "del:k").await);
    assert!(cache.delete("k").await);
    assert!(!raw::exists(&mut raw, "del:k").await);
    assert!(!cache.delete("k").await);
    assert_eq!(cache.get::<i32>("k").await, None);

    // Only the named key goes.
    raw::set(&mut raw, "k", b"1").await;
    assert!(cache.set("k2", &2, None).await);
    assert!(!cache.delete("k").await);
    assert!(raw::exists(&mut raw, "k").await);
    assert_eq!(cache.get::<i32>("k2").await, Some(2));
}

// ----- TTLs ----------------------------------------------------------------------------------

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "ttl").await;
    let mut raw = server.connection().await;
    let short = Duration::from_millis(300);

    assert!(cache.set("short", &"soon gone", Some(short)).await);
    assert!(
        cache
            .set("long", &"stays", Some(Duration::from_secs(60)))
            .await
    );
    assert!(raw::exists(&mut raw, "ttl:short").await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.get::<String>("short").await, None);
    assert!(!raw::exists(&mut raw, "ttl:short").await);
    assert_eq!(cache.get::<String>("long").await.as_deref(), Some("stays"));

    // get_or_load stores for the given TTL, then loads again once it has passed.
    let calls = AtomicUsize::new(0);
    let first = cache
        .get_or_load_with_status("loaded", Some(short), || load(&calls, 1))
        .await
        .unwrap();
    let second = cache
        .get_or_load_with_status("loaded", Some(short), || load(&calls, 2))
        .await
        .unwrap();
    assert_eq!((first.value, first.from_cache), (1, false));
    assert_eq!((second.value, second.from_cache), (1, true));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let third = cache
        .get_or_load_with_status("loaded", Some(short), || load(&calls, 3))
        .await
        .unwrap();
    assert_eq!((third.value, third.from_cache), (3, false));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_default_ttl_is_applied() {
    init_tracing();
    let server = RedisServer::start();
    let mut raw = server.connection().await;

    let configured = CacheService::builder()
        .redis_url(server.url())
        .prefix("configured")
        .default_ttl(Duration::from_secs(120))
        .build()
        .await
        .unwrap();
    assert_eq!(configured.default_ttl(), Duration::from_secs(120));
    assert!(configured.set("a", &1, None).await);
    let ttl = raw::pttl(&mut raw, "configured:a").await;
    assert!((60_000..=120_000).contains(&ttl), "PTTL {ttl}");

    // get_or_load without a TTL uses it too.
    configured
        .get_or_load("b", None, || async { Ok::<_, String>(2) })
        .await
        .unwrap();
    let ttl = raw::pttl(&mut raw, "configured:b").await;
    assert!((60_000..=120_000).contains(&ttl), "PTTL {ttl}");

    // An explicit TTL wins.
    assert!(configured.set("c", &3, Some(Duration::from_secs(10))).await);
    let ttl = raw::pttl(&mut raw, "configured:c").await;
    assert!((1..=10_000).contains(&ttl), "PTTL {ttl}");

    // Nothing configured: the documented default, 300 s. Never a key without expiry.
    let default = service(&server, "default").await;
    assert_eq!(default.default_ttl(), DEFAULT_TTL);
    assert_eq!(DEFAULT_TTL, Duration::from_secs(300));
    assert!(default.set("a", &1, None).await);
    let ttl = raw::pttl(&mut raw, "default:a").await;
    assert!((200_000..=300_000).contains(&ttl), "PTTL {ttl}");
}

// ----- patterns and prefixes -----------------------------------------------------------------

#[tokio::test]
async fn invalidate_pattern_counts_what_it_removes() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "pat").await;
    let mut raw = server.connection().await;

    for id in [1, 2, 3, 4, 5, 10] {
        assert!(cache.set(&format!("users:{id}"), &user(id), None).await);
    }
    for key in ["roles:1", "roles:2", "users", "users:1:posts"] {
        assert!(cache.set(key, &0, None).await);
    }

    assert_eq!(cache.invalidate_pattern("users:?").await, 5);
    assert_eq!(cache.get::<User>("users:1").await, None);
    assert_eq!(cache.get::<User>("users:10").await, Some(user(10)));
    assert_eq!(cache.invalidate_pattern("users:[0-9]*").await, 2); // users:10, users:1:posts
    assert_eq!(cache.invalidate_pattern("roles:[^2]").await, 1);
    assert_eq!(cache.invalidate_pattern("nothing:*").await, 0);
    assert_eq!(cache.invalidate_pattern("users:*").await, 0);
    assert_eq!(cache.get::<i32>("roles:2").await, Some(0));
    assert_eq!(cache.get::<i32>("users").await, Some(0));
    assert!(raw::exists(&mut raw, "pat:roles:2").await);
    assert!(raw::exists(&mut raw, "pat:users").await);
    // An exact key is a pattern too.
    assert_eq!(cache.invalidate_pattern("users").await, 1);
    assert_eq!(cache.stats().invalidations, 6);
}

#[tokio::test]
async fn invalidate_pattern_walks_the_whole_keyspace() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "bulk").await;
    let mut raw = server.connection().await;

    // More keys than one SCAN step returns, interleaved with keys outside the prefix.
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET")
            .arg(format!("bulk:items:{i}"))
            .arg(i)
            .ignore();
        if i % 5 == 0 {
            pipe.cmd("SET")
                .arg(format!("other:items:{i}"))
                .arg(i)
                .ignore();
        }
    }
    let () = pipe.query_async(&mut raw).await.unwrap();
    assert_eq!(raw::dbsize(&mut raw).await, 3000);

    assert_eq!(cache.invalidate_pattern("items:1*").await, 1111);
    assert_eq!(cache.invalidate_pattern("items:*").await, 1389);
    assert_eq!(
        raw::data_keys(&mut raw).await,
        500,
        "keys outside the prefix stay"
    );
    assert_eq!(cache.clear_all().await, 0);
}

#[tokio::test]
async fn clear_all_keeps_keys_outside_the_prefix() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "app").await;
    let mut raw = server.connection().await;

    let outside = [
        "other:users:1",
        "appx:users:1",
        "app",
        "APP:users:1",
        "users:1",
        "xapp:users:1",
    ];
    for key in outside {
        raw::set(&mut raw, key, b"\"outside\"").await;
    }
    for key in ["users:1", "users:2", "roles:1"] {
        assert!(cache.set(key, &1, None).await);
    }

    assert_eq!(cache.clear_all().await, 3);
    assert_eq!(cache.get::<i32>("users:1").await, None);
    assert_eq!(cache.invalidate_pattern("*").await, 0);
    assert_eq!(cache.try_clear_all().await.unwrap(), 0);
    for key in outside {
        assert!(raw::exists(&mut raw, key).await, "{key} must survive");
    }
    assert_eq!(raw::data_keys(&mut raw).await, outside.len() as u64);
}

#[tokio::test]
async fn services_with_different_prefixes_do_not_see_each_other() {
    init_tracing();
    let server = RedisServer::start();
    let a = service(&server, "tenant-a").await;
    let b = service(&server, "tenant-b").await;
    assert_eq!((a.prefix(), b.prefix()), ("tenant-a", "tenant-b"));

    assert!(a.set("users:1", &"from a", None).await);
    assert!(b.set("users:1", &"from b", None).await);
    assert!(b.set("users:2", &"only b", None).await);
    assert_eq!(a.get::<String>("users:1").await.as_deref(), Some("from a"));
    assert_eq!(b.get::<String>("users:1").await.as_deref(), Some("from b"));
    assert_eq!(a.get::<String>("users:2").await, None);

    assert!(a.delete("users:1").await);
    assert_eq!(b.get::<String>("users:1").await.as_deref(), Some("from b"));
    assert!(a.set("users:1", &"from a", None).await);

    assert_eq!(a.invalidate_pattern("users:*").await, 1);
    assert_eq!(b.get::<String>("users:1").await.as_deref(), Some("from b"));
    assert!(a.set("users:1", &"from a", None).await);
    assert_eq!(a.clear_all().await, 1);
    assert_eq!(b.get::<String>("users:2").await.as_deref(), Some("only b"));
    assert_eq!(b.clear_all().await, 2);

    // The default prefix is the documented one.
    let default = CacheService::builder()
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    assert_eq!(default.prefix(), DEFAULT_PREFIX);
    assert!(default.set("k", &1, None).await);
    let mut raw = server.connection().await;
    assert!(raw::exists(&mut raw, &format!("{DEFAULT_PREFIX}:k")).await);
}

#[tokio::test]
async fn a_prefix_with_glob_characters_matches_only_itself() {
    init_tracing();

    // Each hostile prefix, read as a glob, would match the prefixes next to it.
    let cases: [(&str, &[&str]); 5] = [
        ("a*b", &["axb", "ab", "a:b", "a*xb"]),
        ("a?b", &["axb", "a:b"]),
        ("[ab]", &["a", "b"]),
        ("a\\b", &["ab"]),
        ("x[", &["x", "x[a"]),
    ];
    for (hostile, victims) in cases {
        // A server per case, so no case sees another's keys.
        let server = RedisServer::start();
        let mut raw = server.connection().await;
        let cache = service(&server, hostile).await;
        let mut others = Vec::new();
        for victim in victims {
            let other = service(&server, victim).await;
            assert!(other.set("k", &"victim", None).await);
            others.push(other);
        }
        assert!(cache.set("k", &"hostile", None).await);
        assert!(
            raw::exists(&mut raw, &format!("{hostile}:k")).await,
            "the physical key is the literal prefix"
        );

        assert_eq!(cache.invalidate_pattern("*").await, 1, "prefix {hostile}");
        assert_eq!(cache.get::<String>("k").await, None);
        assert!(cache.set("k", &"hostile", None).await);
        assert_eq!(cache.clear_all().await, 1, "prefix {hostile}");
        for other in &others {
            assert_eq!(
                other.get::<String>("k").await.as_deref(),
                Some("victim"),
                "prefix {hostile} reached {}",
                other.prefix()
            );
        }
        assert_eq!(raw::data_keys(&mut raw).await, victims.len() as u64);
    }
}

// ----- foreign and corrupted values -----------------------------------------------------------

/// Writes something that is not a `User` under `corrupt:{key}`.
async fn plant(raw: &mut MultiplexedConnection, key: &str, kind: usize) {
    let physical = format!("corrupt:{key}");
    let () = redis::cmd("UNLINK")
        .arg(&physical)
        .query_async(raw)
        .await
        .unwrap();
    match kind {
        0 => raw::set(raw, &physical, b"\xff\x00\x9fnot json at all").await,
        1 => raw::set(raw, &physical, b"\"a string, not a user\"").await,
        2 => raw::set(raw, &physical, br#"{"id":"one","name":3}"#).await,
        3 => raw::set(raw, &physical, b"").await,
        4 => {
            let () = redis::cmd("RPUSH")
                .arg(&physical)
                .arg("a")
                .arg("b")
                .query_async(raw)
                .await
                .unwrap();
        }
        _ => {
            let () = redis::cmd("HSET")
                .arg(&physical)
                .arg("field")
                .arg("value")
                .query_async(raw)
                .await
                .unwrap();
        }
    }
    assert!(raw::exists(raw, &physical).await);
}

const FOREIGN_KINDS: usize = 6;

/// What reading each planted kind does: an undecodable string is a decode error; an empty
/// string reads like a missing key (reads fetch at most the maximum value size with `GETRANGE`,
/// which answers the same for both); a list or hash is a `WRONGTYPE` reply.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Foreign {
    Undecodable,
    Empty,
    OtherType,
}

fn foreign(kind: usize) -> Foreign {
    match kind {
        3 => Foreign::Empty,
        4 | 5 => Foreign::OtherType,
        _ => Foreign::Undecodable,
    }
}

#[tokio::test]
async fn undecodable_values_are_misses_and_are_removed() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "corrupt").await;
    let mut raw = server.connection().await;

    for kind in 0..FOREIGN_KINDS {
        let key = format!("users:{kind}");
        let physical = format!("corrupt:{key}");
        let foreign = foreign(kind);

        plant(&mut raw, &key, kind).await;
        let before = cache.stats();
        assert_eq!(cache.get::<User>(&key).await, None, "kind {kind}");
        let after = cache.stats();
        assert_eq!(
            raw::exists(&mut raw, &physical).await,
            foreign == Foreign::Empty,
            "kind {kind}: removed unless it reads as missing"
        );
        assert_eq!(
            after.decode_errors - before.decode_errors,
            u64::from(foreign == Foreign::Undecodable),
            "kind {kind}"
        );
        assert_eq!(
            after.faults.wrong_type - before.faults.wrong_type,
            u64::from(foreign == Foreign::OtherType),
            "kind {kind}"
        );
        assert_eq!(after.misses, before.misses + 1, "kind {kind}");
        assert_eq!(after.hits, before.hits, "kind {kind}");

        plant(&mut raw, &key, kind).await;
        match cache.try_get::<User>(&key).await {
            Ok(None) => assert_eq!(foreign, Foreign::Empty, "kind {kind}"),
            Ok(Some(user)) => panic!("kind {kind} decoded as {user:?}"),
            Err(error) => {
                match foreign {
                    Foreign::Undecodable => assert!(error.is_decode(), "kind {kind}: {error}"),
                    Foreign::OtherType => assert_eq!(
                        error.fault_kind(),
                        Some(cachekit::FaultKind::WrongType),
                        "kind {kind}: {error}"
                    ),
                    Foreign::Empty => panic!("kind {kind}: {error}"),
                }
                assert!(!error.is_config() && !error.is_circuit_open());
                // Cached values may hold personal data: the error (and so the log) never
                // quotes them.
                let text = format!(
                    "{error} / {error:?} / {:?}",
                    std::error::Error::source(&error)
                );
                assert!(!text.contains("not a user"), "kind {kind}: {text}");
                assert!(
                    !raw::exists(&mut raw, &physical).await,
                    "kind {kind} not removed"
                );
                assert_eq!(cache.try_get::<User>(&key).await.unwrap(), None);
            }
        }

        // get_or_load replaces it with the loader's value, whatever it was.
        plant(&mut raw, &key, kind).await;
        let calls = AtomicUsize::new(0);
        let fetched = cache
            .get_or_load_with_status(&key, None, || load(&calls, user(9)))
            .await
            .unwrap();
        assert_eq!((fetched.value, fetched.from_cache), (user(9), false));
        assert_eq!(cache.get::<User>(&key).await, Some(user(9)), "kind {kind}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    let stats = cache.stats();
    assert!(stats.decode_errors > 0, "{stats:?}");
    assert_eq!(
        stats.errors, stats.faults.wrong_type,
        "foreign data is no other fault: {stats:?}"
    );
    assert_eq!(stats.breaker, BreakerState::Closed);

    // A value of the wrong Rust type is the same: a miss, removed.
    assert!(cache.set("n", &"not a number", None).await);
    assert_eq!(cache.get::<u64>("n").await, None);
    assert_eq!(cache.get::<String>("n").await, None);
}

// ----- databases and credentials ---------------------------------------------------------------

#[tokio::test]
async fn the_database_number_of_the_url_is_used() {
    init_tracing();
    let server = RedisServer::start();
    let cache = CacheService::builder()
        .redis_url(server.url_db(3))
        .prefix("db")
        .build()
        .await
        .unwrap();
    assert!(cache.set("k", &"in db 3", None).await);

    let mut db3 = redis::Client::open(server.url_db(3))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut db0 = server.connection().await;
    assert_eq!(
        raw::get::<Option<Vec<u8>>>(&mut db3, "db:k")
            .await
            .as_deref(),
        Some(&b"\"in db 3\""[..])
    );
    assert!(!raw::exists(&mut db0, "db:k").await);
    assert_eq!(raw::dbsize(&mut db0).await, 0);

    let health = cache.health().await;
    assert_eq!(
        health.endpoint.as_deref(),
        Some(format!("127.0.0.1:{}/3", server.port()).as_str())
    );
    // DBSIZE: the entry and the invalidation index's keys beside it.
    assert_eq!(
        health.server.expect("server facts").db_keys,
        Some(raw::dbsize(&mut db3).await)
    );
    assert_eq!(raw::data_keys(&mut db3).await, 1);

    let on_db0 = service(&server, "db").await;
    assert_eq!(on_db0.get::<String>("k").await, None);
    assert_eq!(on_db0.clear_all().await, 0);
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("in db 3"));
}

const PASSWORD: &str = "s3cret-Pa55word";
const WRONG_PASSWORD: &str = "wr0ng-Pa55word";
const ACL_PASSWORD: &str = "carol-Pa55word";

// Current-thread runtime: the capturing subscriber is the default of this thread, and every
// task of the test, the service's background reconnection included, runs on it.
#[tokio::test]
async fn credentials_work_and_never_leak() {
    let logs = Captured::default();
    let _subscriber = logs.install();

    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    let mut raw = server.connection().await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("carol")
        .arg("on")
        .arg(format!(">{ACL_PASSWORD}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut raw)
        .await
        .unwrap();

    // The right password, and the right ACL user.
    for (user_name, password, prefix) in [
        (None, PASSWORD, "default-user"),
        (Some("carol"), ACL_PASSWORD, "acl-user"),
    ] {
        let url = server.url_with_auth(user_name, password);
        let cache = CacheService::builder()
            .redis_url(&url)
            .prefix(prefix)
            .build()
            .await
            .unwrap();
        assert!(cache.set("k", &"authenticated", None).await, "{prefix}");
        assert_eq!(
            cache.get::<String>("k").await.as_deref(),
            Some("authenticated")
        );
        assert!(raw::exists(&mut raw, &format!("{prefix}:k")).await);
        let health = cache.health().await;
        assert!(health.connected, "{prefix}: {:?}", health.error);
        assert_eq!(cache.stats().errors, 0);
        let debug = format!("{cache:?} {health:?}");
        assert!(!debug.contains(password), "{debug}");
    }

    // Wrong credentials: builds, degraded; reads miss; nothing says the password.
    for (user_name, prefix) in [(None, "wrong-default"), (Some("carol"), "wrong-acl")] {
        let url = server.url_with_auth(user_name, WRONG_PASSWORD);
        let builder = CacheService::builder().redis_url(&url).prefix(prefix);
        let builder_debug = format!("{builder:?}");
        assert!(!builder_debug.contains(WRONG_PASSWORD), "{builder_debug}");
        let cache = builder.build().await.expect("bad credentials still build");

        assert_eq!(cache.get::<String>("k").await, None);
        assert!(!cache.set("k", &"never stored", None).await);
        let calls = AtomicUsize::new(0);
        let value = cache
            .get_or_load("k", None, || load(&calls, 5))
            .await
            .unwrap();
        assert_eq!((value, calls.load(Ordering::SeqCst)), (5, 1));
        assert!(!raw::exists(&mut raw, &format!("{prefix}:k")).await);

        let health = cache.health().await;
        assert!(!health.connected, "{prefix}");
        assert_eq!(health.latency_us, None);
        let error = health.error.clone().expect("health says why");
        assert!(!error.contains(WRONG_PASSWORD), "{error}");
        // The cause is named.
        assert!(
            error.to_lowercase().contains("authentication failed"),
            "{prefix}: {error}"
        );
        let try_error = cache.try_get::<String>("k").await.unwrap_err();
        let try_error = format!("{try_error} / {try_error:?}");
        assert!(!try_error.contains(WRONG_PASSWORD), "{try_error}");
        let debug = format!("{cache:?} {health:?} {:?}", cache.stats());
        assert!(!debug.contains(WRONG_PASSWORD), "{debug}");
        assert!(cache.stats().errors > 0);
    }

    // No password made it to the log, though the services did log.
    let text = logs.text();
    assert!(text.contains("cachekit"), "nothing was logged:\n{text}");
    for secret in [PASSWORD, WRONG_PASSWORD, ACL_PASSWORD] {
        assert!(!text.contains(secret), "the log leaks {secret}:\n{text}");
    }
}

#[tokio::test]
async fn invalid_urls_are_configuration_errors() {
    init_tracing();
    for url in [
        "http://user:topsecret@127.0.0.1:6379",
        "redis://user:topsecret@127.0.0.1:6379/notanumber",
        "redis://user:topsecret@127.0.0.1:6379/70000",
        "redis://user:topsecret@127.0.0.1:6379/-1",
        "redis://",
        "redis://:topsecret@",
        "redis://:topsecret@:6379/0",
        "redis://127.0.0.1:0",
        "not a url, topsecret",
        "",
    ] {
        let error = CacheService::builder()
            .redis_url(url)
            .build()
            .await
            .expect_err(url);
        let text = format!("{error} / {error:?}");
        assert!(error.is_config(), "{url}: {text}");
        assert!(!text.contains("topsecret"), "{url}: {text}");
    }

    // Other invalid options, too.
    let server = RedisServer::start();
    for builder in [
        CacheService::builder().redis_url(server.url()).prefix(""),
        CacheService::builder()
            .redis_url(server.url())
            .default_ttl(Duration::ZERO),
        CacheService::builder()
            .redis_url(server.url())
            .timeout(Duration::ZERO),
        CacheService::builder()
            .redis_url(server.url())
            .circuit_breaker(0, Duration::from_secs(1)),
    ] {
        let error = builder.build().await.unwrap_err();
        assert!(error.is_config(), "{error}");
    }
    // A later valid URL replaces an invalid one.
    let cache = CacheService::builder()
        .redis_url("http://nope")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    assert!(cache.health().await.connected);
}

// ----- configuration -------------------------------------------------------------------------

#[tokio::test]
async fn configuration_from_a_variable_lookup() {
    init_tracing();
    let server = RedisServer::start();
    let mut raw = server.connection().await;

    // REDIS_URL, as in the seeds' .env files.
    let vars = HashMap::from([
        ("REDIS_URL", server.url_db(1)),
        ("CACHE_PREFIX", "from-env".to_string()),
        ("CACHE_TTL", "90".to_string()),
        ("CACHE_TIMEOUT_MS", "500".to_string()),
    ]);
    let config = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let cache = CacheService::from_config(config).await.unwrap();
    assert_eq!(cache.prefix(), "from-env");
    assert_eq!(cache.default_ttl(), Duration::from_secs(90));
    assert_eq!(cache.stats().backend, BackendKind::Redis);
    assert!(cache.set("k", &"url", None).await);
    let () = redis::cmd("SELECT")
        .arg(1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(raw::exists(&mut raw, "from-env:k").await);
    let ttl = raw::pttl(&mut raw, "from-env:k").await;
    assert!((1..=90_000).contains(&ttl), "PTTL {ttl}");

    // The parts, with a password.
    let locked = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    let vars = HashMap::from([
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", locked.port().to_string()),
        ("REDIS_DB", "2".to_string()),
        ("REDIS_PASSWORD", PASSWORD.to_string()),
        ("REDIS_DEFAULT_TTL", "45".to_string()),
        ("CACHE_PREFIX", "parts".to_string()),
    ]);
    let config = CacheConfig::from_lookup(|name| vars.get(name).cloned()).unwrap();
    assert!(!format!("{config:?}").contains(PASSWORD));
    let cache = CacheService::from_config(config).await.unwrap();
    assert_eq!(cache.default_ttl(), Duration::from_secs(45));
    assert!(cache.set("k", &"parts", None).await);
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("parts"));
    let mut locked_raw = locked.connection().await;
    let () = redis::cmd("SELECT")
        .arg(2)
        .query_async(&mut locked_raw)
        .await
        .unwrap();
    assert!(raw::exists(&mut locked_raw, "parts:k").await);

    // The builder can start from a configuration too.
    let config = CacheConfig::from_lookup(|name| match name {
        "REDIS_URL" => Some(server.url()),
        _ => None,
    })
    .unwrap();
    let cache = cachekit::CacheServiceBuilder::from_config(config)
        .prefix("from-builder")
        .build()
        .await
        .unwrap();
    assert!(cache.set("k", &1, None).await);
    let mut db0 = server.connection().await;
    assert!(raw::exists(&mut db0, "from-builder:k").await);
}

/// Set in the child process that [`from_env_reads_the_process_environment`] runs.
const CHILD_MODE: &str = "CACHEKIT_TEST_FROM_ENV_CHILD";
const CHILD_PREFIX: &str = "from-process-env";

/// `from_env` reads the process environment, which a test cannot change safely while other
/// tests run in the same process; so this test runs itself again in a child process with the
/// variables set, and the child does the checks.
#[tokio::test]
async fn from_env_reads_the_process_environment() {
    init_tracing();
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        return from_env_child(&mode).await;
    }
    let server = RedisServer::start();
    let run_child = |mode: &str, url: &str| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([
            "from_env_reads_the_process_environment",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (name, _) in std::env::vars() {
            if name.starts_with("REDIS_") || name.starts_with("CACHE_") {
                command.env_remove(name);
            }
        }
        let output = command
            .env(CHILD_MODE, mode)
            .env("RUST_LOG", "cachekit=trace")
            .env("REDIS_URL", url)
            .env("CACHE_PREFIX", CHILD_PREFIX)
            .env("CACHE_TTL", "90")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "child ({mode}) failed:\n{text}");
        assert!(
            text.contains("1 passed"),
            "child ({mode}) ran no test:\n{text}"
        );
        text
    };

    run_child("valid", &server.url());
    let mut raw = server.connection().await;
    assert_eq!(
        raw::get::<Option<Vec<u8>>>(&mut raw, &format!("{CHILD_PREFIX}:k"))
            .await
            .as_deref(),
        Some(&b"\"written by the child\""[..])
    );
    let ttl = raw::pttl(&mut raw, &format!("{CHILD_PREFIX}:k")).await;
    assert!((1..=90_000).contains(&ttl), "PTTL {ttl}");

    let text = run_child("invalid", "http://user:topsecret@127.0.0.1:1/0");
    assert!(text.contains("invalid configuration"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
}

async fn from_env_child(mode: &str) {
    let cache = CacheService::from_env().await;
    let calls = AtomicUsize::new(0);
    match mode {
        "valid" => {
            assert_eq!(cache.stats().backend, BackendKind::Redis);
            assert_eq!(cache.prefix(), CHILD_PREFIX);
            assert_eq!(cache.default_ttl(), Duration::from_secs(90));
            assert!(cache.set("k", &"written by the child", None).await);
            assert!(cache.health().await.connected);
        }
        "invalid" => {
            // Never fails: an invalid configuration caches nothing, and says so.
            assert_eq!(cache.stats().backend, BackendKind::Disabled);
            for _ in 0..2 {
                let value = cache
                    .get_or_load("k", None, || load(&calls, 1))
                    .await
                    .unwrap();
                assert_eq!(value, 1);
            }
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }
        other => panic!("unknown child mode {other}"),
    }
}

// ----- cache-aside -----------------------------------------------------------------------------

#[tokio::test]
async fn get_or_load_caches_ok_values_and_never_errors() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "aside").await;
    let mut raw = server.connection().await;
    let calls = AtomicUsize::new(0);

    let first = cache
        .get_or_load("users:1", None, || load(&calls, user(1)))
        .await
        .unwrap();
    let second = cache
        .get_or_load("users:1", None, || load(&calls, user(99)))
        .await
        .unwrap();
    assert_eq!((first, second), (user(1), user(1)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<User>("users:1").await, Some(user(1)));

    // An Err passes through and is not stored.
    let failed: Result<User, String> = cache
        .get_or_load("users:2", None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("database down".to_string())
        })
        .await;
    assert_eq!(failed.unwrap_err(), "database down");
    assert_eq!(cache.get::<User>("users:2").await, None);
    // The failed loader's lease (a marker in the key while it loads) is given back in the
    // background, well before its TTL: nothing stays under the key.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while raw::exists(&mut raw, "aside:users:2").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed loader left something under its key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fetched = cache
        .get_or_load_with_status("users:2", None, || load(&calls, user(2)))
        .await
        .unwrap();
    assert_eq!((fetched.value, fetched.from_cache), (user(2), false));
    let fetched = cache
        .get_or_load_with_status("users:2", None, || load(&calls, user(98)))
        .await
        .unwrap();
    assert_eq!((fetched.value, fetched.from_cache), (user(2), true));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // After an invalidation the loader runs again.
    assert_eq!(cache.invalidate_pattern("users:*").await, 2);
    let fetched = cache
        .get_or_load_with_status("users:1", None, || load(&calls, user(11)))
        .await
        .unwrap();
    assert_eq!((fetched.value, fetched.from_cache), (user(11), false));
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // Clones share the store and the counters.
    let clone = cache.clone();
    let fetched = clone
        .get_or_load_with_status("users:1", None, || load(&calls, user(12)))
        .await
        .unwrap();
    assert_eq!((fetched.value, fetched.from_cache), (user(11), true));
    assert_eq!(clone.stats(), cache.stats());
}

// ----- introspection ---------------------------------------------------------------------------

#[tokio::test]
async fn stats_count_every_operation() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "stats").await;

    let fresh = cache.stats();
    assert_eq!(
        (fresh.hits, fresh.misses, fresh.sets, fresh.deletes),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (fresh.invalidations, fresh.errors, fresh.fallbacks),
        (0, 0, 0)
    );
    assert_eq!(fresh.hit_rate(), 0.0);
    assert_eq!(fresh.backend, BackendKind::Redis);
    assert_eq!(fresh.breaker, BreakerState::Closed);

    assert_eq!(cache.get::<i32>("a").await, None); // miss 1
    assert!(cache.set("a", &1, None).await); // set 1
    assert_eq!(cache.get::<i32>("a").await, Some(1)); // hit 1
    assert_eq!(cache.try_get::<i32>("a").await.unwrap(), Some(1)); // hit 2
    let calls = AtomicUsize::new(0);
    cache
        .get_or_load("a", None, || load(&calls, 2))
        .await
        .unwrap(); // hit 3
    cache
        .get_or_load("b", None, || load(&calls, 2))
        .await
        .unwrap(); // miss 2, set 2
    cache.try_set("c", &3, None).await.unwrap(); // set 3
    assert!(cache.delete("a").await); // delete 1
    assert!(!cache.delete("a").await); // delete 2
    assert!(!cache.try_delete("a").await.unwrap()); // delete 3
    assert_eq!(cache.invalidate_pattern("b").await, 1); // invalidation 1
    assert_eq!(cache.try_invalidate_pattern("x*").await.unwrap(), 0); // invalidation 2
    assert_eq!(cache.clear_all().await, 1); // invalidation 3
    assert_eq!(cache.try_clear_all().await.unwrap(), 0); // invalidation 4
    assert_eq!(cache.get::<i32>("c").await, None); // miss 3

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (3, 3));
    assert_eq!((stats.sets, stats.deletes, stats.invalidations), (3, 3, 4));
    assert_eq!(
        (stats.errors, stats.fallbacks, stats.decode_errors),
        (0, 0, 0)
    );
    assert_eq!(stats.hit_rate(), 0.5);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Serializable, for a /cache/stats endpoint.
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["hits"], 3);
    assert_eq!(json["backend"], "redis");
    assert_eq!(json["breaker"], "closed");
}

#[tokio::test]
async fn health_reports_a_round_trip_and_server_facts() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server, "health").await;
    let mut raw = server.connection().await;

    for i in 0..7 {
        assert!(cache.set(&format!("k{i}"), &i, None).await);
    }
    for key in ["elsewhere:1", "healthy:1", "health"] {
        raw::set(&mut raw, key, b"1").await;
    }

    let health = cache.health().await;
    assert_eq!(health.backend, BackendKind::Redis);
    assert!(health.connected, "{:?}", health.error);
    assert_eq!(health.error, None);
    assert!(health.latency_us.is_some());
    assert_eq!(
        health.latency(),
        health.latency_us.map(Duration::from_micros)
    );
    assert_eq!(health.breaker, BreakerState::Closed);
    assert_eq!(
        health.endpoint.as_deref(),
        Some(format!("127.0.0.1:{}/0", server.port()).as_str())
    );
    let facts = health.server.clone().expect("server facts when connected");
    assert_eq!(
        facts.db_keys,
        Some(raw::dbsize(&mut raw).await),
        "DBSIZE, the invalidation index's keys included"
    );
    assert_eq!(
        raw::data_keys(&mut raw).await,
        10,
        "the 7 entries and the 3 keys set raw"
    );
    assert!(facts.uptime_seconds.is_some());
    assert!(facts.used_memory_bytes.is_some_and(|bytes| bytes > 0));
    assert!(facts.connected_clients.is_some_and(|n| n >= 1));
    assert!(facts.version.is_some_and(|v| !v.is_empty()));

    assert_eq!(cache.clear_all().await, 7);
    let facts = cache.health().await.server.expect("server facts");
    assert!(facts.db_keys.is_some_and(|n| n >= 3), "{facts:?}");
    assert_eq!(
        raw::data_keys(&mut raw).await,
        3,
        "only the raw keys are left"
    );

    // Serializable, for a /health endpoint.
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(json["connected"], true);
    assert_eq!(
        json["server"]["db_keys"],
        health.server.as_ref().and_then(|s| s.db_keys).unwrap()
    );
    assert!(json["server"]["maxmemory_policy"].is_string());
}
