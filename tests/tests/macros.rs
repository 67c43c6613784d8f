//! `#[cached]` and `#[invalidates]` end to end, against a private `redis-server` per test: which
//! calls run the body, what lands in Redis under which key, and what is invalidated.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cachekit::{CacheService, HasCache, cached, invalidates};
use cachekit_tests::{RedisServer, init_tracing, raw};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "macros";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, PartialEq)]
struct DbError(String);

impl From<std::num::ParseIntError> for DbError {
    fn from(error: std::num::ParseIntError) -> Self {
        Self(error.to_string())
    }
}

#[derive(Debug, Serialize)]
struct Filter {
    active: bool,
    role: String,
}

/// A repository whose "database" counts its queries.
struct UserRepo {
    cache: CacheService,
    queries: AtomicUsize,
}

impl HasCache for UserRepo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl UserRepo {
    async fn new(server: &RedisServer) -> Self {
        Self {
            cache: service(server).await,
            queries: AtomicUsize::new(0),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(SeqCst)
    }

    fn query(&self) {
        self.queries.fetch_add(1, SeqCst);
    }

    /// Id 0 fails; 404 does not exist.
    #[cached(ttl = 300, key = "users:{id}")]
    async fn get_user(&self, id: u64) -> Result<Option<User>, DbError> {
        self.query();
        match id {
            0 => Err(DbError("connection reset".into())),
            404 => Ok(None),
            _ => Ok(Some(User {
                id: id.to_string().parse()?,
                name: format!("user {id}"),
            })),
        }
    }

    #[cached(ttl = 60, key = "users:list")]
    async fn list_users(&self, skip: u32, limit: u32) -> Result<Vec<User>, DbError> {
        self.query();
        Ok((skip..skip + limit.min(3))
            .map(|i| User {
                id: i.into(),
                name: format!("user {i}"),
            })
            .collect())
    }

    #[cached(key = "users:by_name:{name}")]
    async fn find(&self, name: &str, filter: &Filter) -> Vec<User> {
        self.query();
        let _ = filter;
        vec![User {
            id: 1,
            name: name.to_owned(),
        }]
    }

    #[cached(key = "users:{id}:profile", status)]
    async fn profile(&self, id: u64) -> Result<User, DbError> {
        self.query();
        Ok(User {
            id,
            name: "profile".into(),
        })
    }

    #[invalidates("users:*")]
    async fn update_user(&self, id: u64, name: &str) -> Result<User, DbError> {
        self.query();
        if name.is_empty() {
            return Err(DbError("empty name".into()));
        }
        Ok(User {
            id,
            name: name.to_owned(),
        })
    }

    #[invalidates("users:{id}", "user_roles:{id}")]
    async fn delete_user(&self, id: &str) -> Result<(), DbError> {
        self.query();
        let _ = id;
        Ok(())
    }
}

async fn service(server: &RedisServer) -> CacheService {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(PREFIX)
        .build()
        .await
        .expect("a valid configuration builds")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn a_second_call_with_the_same_arguments_does_not_run_the_body() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;

    let first = repo.get_user(7).await.unwrap();
    let second = repo.get_user(7).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(repo.queries(), 1, "the second call is served from Redis");

    repo.get_user(8).await.unwrap();
    assert_eq!(repo.queries(), 2, "different arguments run the body");
}

#[tokio::test]
async fn the_value_is_plain_json_under_the_prefixed_key_with_its_ttl() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    repo.get_user(7).await.unwrap();
    let json = raw::get::<Option<String>>(&mut conn, "macros:users:7")
        .await
        .expect("stored");
    assert_eq!(json, r#"{"id":7,"name":"user 7"}"#);
    let ttl = raw::ttl(&mut conn, "macros:users:7").await;
    assert!((1..=300).contains(&ttl), "ttl = 300 applied, found {ttl}");
}

#[tokio::test]
async fn unnamed_arguments_are_hashed_as_documented() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    let users = repo.list_users(0, 100).await.unwrap();
    // The documented test vector: hex(sha256(b"[0,100]")), computed here independently.
    let hash = sha256_hex(b"[0,100]");
    assert_eq!(
        hash,
        "ba9e2e0a09d7b9299347d9d498a66648dcf88929d89755628674e2ef922ccbd7"
    );
    let json = raw::get::<Option<String>>(&mut conn, &format!("macros:users:list:{hash}"))
        .await
        .expect("stored under the documented key");
    assert_eq!(serde_json::from_str::<Vec<User>>(&json).unwrap(), users);

    repo.list_users(0, 100).await.unwrap();
    assert_eq!(repo.queries(), 1);
    repo.list_users(0, 50).await.unwrap();
    assert_eq!(repo.queries(), 2, "another hashed argument is another key");
}

#[tokio::test]
async fn a_key_written_by_another_language_is_read() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    // What a service in another language would write under the same documented key.
    let key = format!("macros:users:list:{}", sha256_hex(b"[5,2]"));
    raw::set(&mut conn, &key, r#"[{"id":5,"name":"from python"}]"#).await;
    let users = repo.list_users(5, 2).await.unwrap();
    assert_eq!(users[0].name, "from python");
    assert_eq!(repo.queries(), 0);
}

#[tokio::test]
async fn errors_and_none_are_not_cached() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;

    assert!(repo.get_user(0).await.is_err());
    assert!(repo.get_user(0).await.is_err());
    assert_eq!(repo.queries(), 2, "an Err is never stored");
    assert_eq!(repo.cache.get::<serde_json::Value>("users:0").await, None);

    assert_eq!(repo.get_user(404).await, Ok(None));
    assert_eq!(repo.get_user(404).await, Ok(None));
    assert_eq!(repo.queries(), 4, "None is not stored without cache_none");
    assert_eq!(repo.cache.get::<serde_json::Value>("users:404").await, None);
}

#[tokio::test]
async fn invalidation_runs_after_success_only() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    repo.get_user(1).await.unwrap();
    repo.list_users(0, 10).await.unwrap();
    raw::set(&mut conn, "macros:orders:1", "1").await;

    assert!(repo.update_user(1, "").await.is_err());
    assert!(
        raw::get::<Option<String>>(&mut conn, "macros:users:1")
            .await
            .is_some(),
        "Err invalidates nothing"
    );

    repo.update_user(1, "ann").await.unwrap();
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:users:1").await,
        None
    );
    let list = format!("macros:users:list:{}", sha256_hex(b"[0,10]"));
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, &list).await,
        None,
        "users:* removes every user key"
    );
    assert!(
        raw::get::<Option<String>>(&mut conn, "macros:orders:1")
            .await
            .is_some(),
        "other keys stay"
    );

    repo.get_user(1).await.unwrap();
    assert_eq!(repo.queries(), 5, "the next read goes to the database");
}

#[tokio::test]
async fn placeholder_values_are_glob_escaped() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    repo.get_user(1).await.unwrap();
    repo.get_user(2).await.unwrap();
    raw::set(&mut conn, "macros:users:*", "\"literal star\"").await;
    raw::set(&mut conn, "macros:user_roles:1", "[]").await;

    repo.delete_user("*").await.unwrap();
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:users:*").await,
        None,
        "the key literally named `users:*` is deleted"
    );
    assert!(
        raw::get::<Option<String>>(&mut conn, "macros:users:1")
            .await
            .is_some(),
        "no other user"
    );
    assert!(
        raw::get::<Option<String>>(&mut conn, "macros:users:2")
            .await
            .is_some(),
        "no other user"
    );

    repo.delete_user("1").await.unwrap();
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:users:1").await,
        None
    );
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:user_roles:1").await,
        None
    );
    assert!(
        raw::get::<Option<String>>(&mut conn, "macros:users:2")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn functions_taking_references() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;
    let mut conn = server.connection().await;

    let filter = Filter {
        active: true,
        role: "admin".into(),
    };
    let found = repo.find("ann", &filter).await;
    assert_eq!(repo.find("ann", &filter).await, found);
    assert_eq!(repo.queries(), 1);

    // `name` is in the template; `filter` is hashed.
    let hash = sha256_hex(br#"[{"active":true,"role":"admin"}]"#);
    let key = format!("macros:users:by_name:ann:{hash}");
    assert!(
        raw::get::<Option<String>>(&mut conn, &key).await.is_some(),
        "{key}"
    );
}

#[tokio::test]
async fn status_tells_hits_from_misses() {
    init_tracing();
    let server = RedisServer::start();
    let repo = UserRepo::new(&server).await;

    let miss = repo.profile_with_status(3).await.unwrap();
    assert!(!miss.from_cache);
    let hit = repo.profile_with_status(3).await.unwrap();
    assert!(hit.from_cache);
    assert_eq!(hit.value, miss.value);
    assert_eq!(repo.profile(3).await.unwrap(), miss.value);
    assert_eq!(repo.queries(), 1);
}

static SEARCHES: AtomicUsize = AtomicUsize::new(0);

/// No `key`: the module path and the name, then the hash of every argument.
#[cached(cache = cache, ttl = 5)]
async fn search(cache: &CacheService, text: &str, limit: u32) -> Vec<String> {
    let _ = cache;
    SEARCHES.fetch_add(1, SeqCst);
    vec![format!("{text}:{limit}")]
}

#[tokio::test]
async fn free_functions_take_the_service_from_an_expression() {
    init_tracing();
    let server = RedisServer::start();
    let cache = service(&server).await;
    let mut conn = server.connection().await;

    let before = SEARCHES.load(SeqCst);
    let found = search(&cache, "rust", 10).await;
    assert_eq!(search(&cache, "rust", 10).await, found);
    assert_eq!(SEARCHES.load(SeqCst) - before, 1);

    // The parameter used by `cache = ...` is the service, not part of the key.
    let key = format!("macros:macros::search:{}", sha256_hex(br#"["rust",10]"#));
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, &key).await.as_deref(),
        Some(r#"["rust:10"]"#)
    );
    let ttl = raw::ttl(&mut conn, &key).await;
    assert!((1..=5).contains(&ttl), "ttl = 5 applied, found {ttl}");
}

static GLOBAL_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(key = "global:{id}")]
async fn from_global(id: u64) -> Result<u64, DbError> {
    GLOBAL_LOADS.fetch_add(1, SeqCst);
    Ok(id * 2)
}

#[invalidates("global:{id}")]
async fn forget_global(id: u64) -> Result<(), DbError> {
    let _ = id;
    Ok(())
}

#[tokio::test]
async fn free_functions_use_the_process_wide_service() {
    init_tracing();
    // The only test in this binary that sets (or uses) the global service. Its server stops
    // with the test; the global service then points at nothing, which no other test reads.
    let server = RedisServer::start();
    cachekit::set_global(service(&server).await).expect("set once");
    let mut conn = server.connection().await;

    assert_eq!(from_global(21).await, Ok(42));
    assert_eq!(from_global(21).await, Ok(42));
    assert_eq!(GLOBAL_LOADS.load(SeqCst), 1);
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:global:21")
            .await
            .as_deref(),
        Some("42")
    );

    forget_global(21).await.unwrap();
    assert_eq!(
        raw::get::<Option<String>>(&mut conn, "macros:global:21").await,
        None
    );
    assert_eq!(from_global(21).await, Ok(42));
    assert_eq!(GLOBAL_LOADS.load(SeqCst), 2);
}
