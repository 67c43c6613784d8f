//! What the generated code does, against the in-process store: which calls run the body,
//! which keys are written, what is invalidated. The same properties against a real Redis are
//! in the workspace's `tests/` crate.

use cachekit::key::hash_args;
use cachekit::{CacheService, HasCache, cached, invalidates};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, PartialEq)]
struct DbError(String);

impl From<std::num::ParseIntError> for DbError {
    fn from(error: std::num::ParseIntError) -> Self {
        DbError(error.to_string())
    }
}

struct Repo {
    cache: CacheService,
    calls: AtomicUsize,
}

impl HasCache for Repo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl Repo {
    fn new() -> Self {
        Repo {
            cache: CacheService::memory(),
            calls: AtomicUsize::new(0),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// Ids: 0 fails, 404 is missing, anything else exists.
    #[cached(ttl = 300, key = "users:{id}")]
    async fn get_user(&self, id: u64) -> Result<Option<User>, DbError> {
        self.calls.fetch_add(1, SeqCst);
        if id == 0 {
            return Err(DbError("no user 0".into()));
        }
        if id == 404 {
            return Ok(None);
        }
        // `?` with an error conversion, inside the cached body.
        let parsed: u64 = id.to_string().parse()?;
        Ok(Some(User {
            id: parsed,
            name: format!("user {id}"),
        }))
    }

    #[cached(key = "users:{id}:or_none", cache_none)]
    async fn get_user_or_none(&self, id: u64) -> Result<Option<User>, DbError> {
        self.calls.fetch_add(1, SeqCst);
        Ok(None).map(|none: Option<u64>| {
            none.map(|id| User {
                id,
                name: String::new(),
            })
        })
    }

    #[cached(ttl = 60, key = "users:list")]
    async fn list_users(&self, skip: u32, limit: u32) -> Result<Vec<User>, DbError> {
        self.calls.fetch_add(1, SeqCst);
        Ok((skip..skip + limit.min(2))
            .map(|i| User {
                id: i.into(),
                name: format!("user {i}"),
            })
            .collect())
    }

    #[cached(key = "users:{id}:status", status)]
    async fn get_user_status(&self, id: u64) -> Result<User, DbError> {
        self.calls.fetch_add(1, SeqCst);
        Ok(User {
            id,
            name: "status".into(),
        })
    }

    #[invalidates("users:*")]
    async fn update_user(&self, id: u64, name: String) -> Result<User, DbError> {
        self.calls.fetch_add(1, SeqCst);
        if name.is_empty() {
            return Err(DbError("empty name".into()));
        }
        Ok(User { id, name })
    }

    #[invalidates("users:{id}", "user_roles:{id}")]
    async fn delete_user(&self, id: &str) -> Result<(), DbError> {
        self.calls.fetch_add(1, SeqCst);
        let _ = id;
        Ok(())
    }

    #[cached(key = "route:{from}:{to}")]
    async fn route(&self, from: &str, to: &str) -> String {
        self.calls.fetch_add(1, SeqCst);
        format!("{from} -> {to}")
    }

    #[invalidates("route:{from}:{to}")]
    async fn reroute(&self, from: &str, to: &str) {
        let _ = (from, to);
    }

    #[cached(key = "counter:{step}")]
    async fn bump(&mut self, step: u32) -> u64 {
        // `&mut self` in the body while the call runs.
        *self.calls.get_mut() += 1;
        u64::from(step)
    }
}

#[tokio::test]
async fn a_second_call_with_the_same_arguments_does_not_run_the_body() {
    let repo = Repo::new();
    let first = repo.get_user(7).await.unwrap();
    let second = repo.get_user(7).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(repo.calls(), 1);
    assert_eq!(
        repo.cache.get::<Option<User>>("users:7").await,
        Some(first),
        "stored under the rendered template"
    );
    repo.get_user(8).await.unwrap();
    assert_eq!(repo.calls(), 2, "different arguments run the body");
}

#[tokio::test]
async fn errors_and_none_are_not_cached() {
    let repo = Repo::new();
    assert!(repo.get_user(0).await.is_err());
    assert!(repo.get_user(0).await.is_err());
    assert_eq!(repo.calls(), 2);
    assert_eq!(repo.get_user(404).await, Ok(None));
    assert_eq!(repo.get_user(404).await, Ok(None));
    assert_eq!(repo.calls(), 4);
    assert_eq!(repo.cache.get::<Option<User>>("users:404").await, None);
}

#[tokio::test]
async fn cache_none_caches_none() {
    let repo = Repo::new();
    assert_eq!(repo.get_user_or_none(1).await, Ok(None));
    assert_eq!(repo.get_user_or_none(1).await, Ok(None));
    assert_eq!(repo.calls(), 1);
}

#[tokio::test]
async fn unnamed_arguments_are_hashed_into_the_key() {
    let repo = Repo::new();
    let users = repo.list_users(0, 100).await.unwrap();
    let key = "users:list:ba9e2e0a09d7b9299347d9d498a66648dcf88929d89755628674e2ef922ccbd7";
    assert_eq!(repo.cache.get::<Vec<User>>(key).await, Some(users));
    repo.list_users(0, 100).await.unwrap();
    repo.list_users(1, 100).await.unwrap();
    assert_eq!(repo.calls(), 2);
}

#[tokio::test]
async fn status_reports_hits() {
    let repo = Repo::new();
    let miss = repo.get_user_status_with_status(3).await.unwrap();
    assert!(!miss.from_cache);
    let hit = repo.get_user_status_with_status(3).await.unwrap();
    assert!(hit.from_cache);
    assert_eq!(hit.value, miss.value);
    assert_eq!(repo.get_user_status(3).await.unwrap(), miss.value);
    assert_eq!(repo.calls(), 1);
}

#[tokio::test]
async fn invalidation_runs_after_success_only() {
    let repo = Repo::new();
    repo.get_user(1).await.unwrap();
    assert!(repo.update_user(1, String::new()).await.is_err());
    repo.get_user(1).await.unwrap();
    assert_eq!(repo.calls(), 2, "a failed update keeps the entry");
    repo.update_user(1, "new".into()).await.unwrap();
    repo.get_user(1).await.unwrap();
    assert_eq!(repo.calls(), 4, "a successful update removes it");
}

#[tokio::test]
async fn placeholder_values_are_glob_escaped() {
    let repo = Repo::new();
    repo.get_user(1).await.unwrap();
    repo.delete_user("*").await.unwrap();
    assert!(repo.cache.get::<Option<User>>("users:1").await.is_some());
    repo.delete_user("1").await.unwrap();
    assert!(repo.cache.get::<Option<User>>("users:1").await.is_none());
}

#[tokio::test]
async fn placeholder_values_containing_colons_do_not_share_a_key() {
    let repo = Repo::new();
    assert_eq!(repo.route("a:b", "c").await, "a:b -> c");
    assert_eq!(repo.route("a", "b:c").await, "a -> b:c");
    assert_eq!(repo.calls(), 2, "two argument tuples, two entries");
    assert_eq!(
        repo.cache.get::<String>("route:a%3Ab:c").await.as_deref(),
        Some("a:b -> c")
    );
    assert_eq!(
        repo.cache.get::<String>("route:a:b%3Ac").await.as_deref(),
        Some("a -> b:c")
    );
    assert_eq!(repo.cache.get::<String>("route:a:b:c").await, None);

    // `%` is escaped too, so an escaped-looking value is its own key.
    assert_eq!(repo.route("a%3Ab", "c").await, "a%3Ab -> c");
    assert_eq!(repo.calls(), 3);
    assert!(repo.cache.get::<String>("route:a%253Ab:c").await.is_some());

    // Values without `%` or `:` render as they always did.
    repo.route("ams", "lis").await;
    assert!(repo.cache.get::<String>("route:ams:lis").await.is_some());
}

#[tokio::test]
async fn invalidation_names_the_key_of_the_same_arguments() {
    let repo = Repo::new();
    repo.route("a:b", "c").await;
    repo.route("a", "b:c").await;
    repo.route("a%3Ab", "c").await;
    repo.reroute("a:b", "c").await;
    assert_eq!(repo.cache.get::<String>("route:a%3Ab:c").await, None);
    assert!(repo.cache.get::<String>("route:a:b%3Ac").await.is_some());
    assert!(repo.cache.get::<String>("route:a%253Ab:c").await.is_some());

    repo.route("a:b", "c").await;
    assert_eq!(repo.calls(), 4, "the invalidated entry is loaded again");
    repo.route("a", "b:c").await;
    assert_eq!(repo.calls(), 4, "the other one is still cached");

    // A glob in a value stays literal after escaping.
    repo.reroute("a*", "*").await;
    assert!(repo.cache.get::<String>("route:a:b%3Ac").await.is_some());
}

#[tokio::test]
async fn exclusive_self() {
    let mut repo = Repo::new();
    assert_eq!(repo.bump(2).await, 2);
    assert_eq!(repo.bump(2).await, 2);
    assert_eq!(repo.calls(), 1);
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

fn local_cache() -> &'static CacheService {
    static CACHE: std::sync::OnceLock<CacheService> = std::sync::OnceLock::new();
    CACHE.get_or_init(CacheService::memory)
}

#[derive(Serialize)]
struct Filter {
    active: bool,
}

/// No key: the module path and the name, then the hash of every argument.
#[cached(cache = local_cache())]
async fn search(name: &str, filter: &Filter) -> Vec<String> {
    CALLS.fetch_add(1, SeqCst);
    vec![format!("{name}:{}", filter.active)]
}

#[tokio::test]
async fn free_functions_with_references() {
    let filter = Filter { active: true };
    let found = search("ann", &filter).await;
    let key = format!("behavior::search:{}", hash_args(&("ann", &filter)));
    assert_eq!(local_cache().get::<Vec<String>>(&key).await, Some(found));
}

#[cached(key = "both:{id}", cache = local_cache())]
#[invalidates("both_list:*")]
async fn cached_and_invalidating(id: u32) -> Result<u32, DbError> {
    Ok(id)
}

#[invalidates("both_list:*", cache = local_cache())]
#[cached(key = "both_rev:{id}", cache = local_cache())]
async fn invalidating_and_cached(id: u32) -> Result<u32, DbError> {
    Ok(id)
}

/// Whichever order the attributes are in, a miss invalidates and a hit does not.
async fn invalidates_on_a_miss_only(call: impl AsyncFn() -> Result<u32, DbError>) {
    let cache = local_cache();
    cache.set("both_list:1", &1, None).await;
    call().await.unwrap();
    assert_eq!(
        cache.get::<u32>("both_list:1").await,
        None,
        "a miss invalidates"
    );
    cache.set("both_list:1", &1, None).await;
    call().await.unwrap();
    assert_eq!(
        cache.get::<u32>("both_list:1").await,
        Some(1),
        "a hit does not"
    );
}

#[tokio::test]
async fn both_attributes_invalidate_on_a_miss_only() {
    invalidates_on_a_miss_only(async || cached_and_invalidating(5).await).await;
    invalidates_on_a_miss_only(async || invalidating_and_cached(5).await).await;
}
