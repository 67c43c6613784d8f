//! The functions being cached: a cachekit repository with `#[cached]` methods, and the same
//! two loaders under the `cached` crate's `#[concurrent_cached]` over its `AsyncRedisCache`.

use crate::User;
use cachekit::{CacheService, HasCache, cached};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the slow loader of the stampede takes: the database query of the issue.
pub const SLOW_LOAD: Duration = Duration::from_millis(50);

/// What a loader can fail with.
#[derive(Debug)]
pub enum DbError {
    /// The `cached` crate's store failed (it reports store errors through the function).
    Cache(String),
}

/// A repository of users cached with cachekit's `#[cached]`, counting how often its loaders
/// (the "database") run.
#[derive(Debug, Clone)]
pub struct UserRepo {
    cache: CacheService,
    loads: Arc<AtomicU64>,
}

impl HasCache for UserRepo {
    fn cache(&self) -> &CacheService {
        &self.cache
    }
}

impl UserRepo {
    /// A repository caching through `cache`.
    pub fn new(cache: CacheService) -> Self {
        Self {
            cache,
            loads: Arc::default(),
        }
    }

    /// How many times a loader ran.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    /// The user, cached for five minutes under `users:{id}`; the loader is instant.
    #[cached(ttl = 300, key = "users:{id}")]
    pub async fn get_user(&self, id: u64) -> Result<User, DbError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(User::sample(id))
    }

    /// The user, cached under `slow_users:{id}`; the loader takes [`SLOW_LOAD`].
    #[cached(ttl = 300, key = "slow_users:{id}")]
    pub async fn get_user_slowly(&self, id: u64) -> Result<User, DbError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(SLOW_LOAD).await;
        Ok(User::sample(id))
    }
}

// ----- the `cached` crate ------------------------------------------------------------------

/// The Redis URL the `cached` crate's stores connect to. Its macro keeps each store in a
/// process-wide static, created on first call, so one process benchmarks one Redis.
static CACHED_CRATE_URL: Mutex<Option<String>> = Mutex::new(None);
/// Loader runs of [`cached_crate_get_user`].
static CACHED_CRATE_LOADS: AtomicU64 = AtomicU64::new(0);
/// Loader runs of [`cached_crate_get_user_slowly`].
static CACHED_CRATE_SLOW_LOADS: AtomicU64 = AtomicU64::new(0);

/// Points the `cached` crate's stores at `url`. Fails if they were pointed elsewhere before:
/// once created, a store cannot move.
pub(crate) fn set_cached_crate_url(url: &str) -> Result<(), String> {
    let mut current = CACHED_CRATE_URL.lock().unwrap_or_else(|e| e.into_inner());
    match current.as_deref() {
        // Not the URL itself in the message: it may hold a password.
        Some(previous) if previous != url => Err("the `cached` crate keeps its Redis stores \
             in process-wide statics, already connected to another Redis; run one benchmark \
             per process"
            .to_owned()),
        _ => {
            *current = Some(url.to_owned());
            Ok(())
        }
    }
}

/// How many times the loader of [`cached_crate_get_user`] ran.
pub(crate) fn cached_crate_loads() -> u64 {
    CACHED_CRATE_LOADS.load(Ordering::SeqCst)
}

/// How many times the loader of [`cached_crate_get_user_slowly`] ran.
pub(crate) fn cached_crate_slow_loads() -> u64 {
    CACHED_CRATE_SLOW_LOADS.load(Ordering::SeqCst)
}

/// The store the macro creates on first call: the same server, a TTL of five minutes, and
/// redis-rs's ConnectionManager as cachekit uses. Keys are `cachekit-bench:{prefix}:{id}`.
async fn cached_crate_store(prefix: &str) -> cached::AsyncRedisCache<u64, User> {
    let url = CACHED_CRATE_URL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("set_cached_crate_url is called before the `cached` crate's functions");
    cached::AsyncRedisCache::builder(prefix)
        .namespace(crate::PREFIX)
        .ttl(Duration::from_secs(300))
        .connection_manager(true)
        .connection_string(&url)
        .build()
        .await
        .expect("the `cached` crate's store connects")
}

/// The `cached` crate's counterpart of [`UserRepo::get_user`].
#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<u64, User>",
    create = r#"{ cached_crate_store("cached_crate_users").await }"#,
    key = "u64",
    convert = r#"{ id }"#,
    map_error = r#"|e| DbError::Cache(format!("{e:?}"))"#
)]
pub(crate) async fn cached_crate_get_user(id: u64) -> Result<User, DbError> {
    CACHED_CRATE_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(User::sample(id))
}

/// The `cached` crate's counterpart of [`UserRepo::get_user_slowly`].
#[cached::macros::concurrent_cached(
    ty = "cached::AsyncRedisCache<u64, User>",
    create = r#"{ cached_crate_store("cached_crate_slow_users").await }"#,
    key = "u64",
    convert = r#"{ id }"#,
    map_error = r#"|e| DbError::Cache(format!("{e:?}"))"#
)]
pub(crate) async fn cached_crate_get_user_slowly(id: u64) -> Result<User, DbError> {
    CACHED_CRATE_SLOW_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(SLOW_LOAD).await;
    Ok(User::sample(id))
}
