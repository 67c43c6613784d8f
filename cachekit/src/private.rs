//! Runtime support for the code `#[cached]` and `#[invalidates]` generate. Not a public API:
//! it may change in any release.

use crate::{CacheService, Fetched};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::key::{escape_glob, hash_args};
pub use crate::{HasCache, global};
pub use serde::{Serialize, de::DeserializeOwned};
pub use std::option::Option::{self, None, Some};
pub use std::time::Duration;

/// The `ttl = N` of a `#[cached]`, evaluated at compile time (the macro emits the call in a
/// `const` block). The macro has checked `1 <= secs <= macro_max`; this checks that
/// `macro_max` is this crate's [`MAX_TTL`](crate::MAX_TTL), so that the two crates cannot
/// disagree on the bound and still compile.
pub const fn checked_ttl_secs(secs: u64, macro_max: u64) -> u64 {
    assert!(
        macro_max == crate::config::MAX_TTL_SECS,
        "cachekit-macros and cachekit disagree on MAX_TTL: use matching versions"
    );
    secs
}

/// The service of a value implementing [`HasCache`].
pub fn has_cache<H: HasCache + ?Sized>(h: &H) -> &CacheService {
    h.cache()
}

/// The service named by a `cache = <expr>` option: a `CacheService`, a reference to one, an
/// `Arc<CacheService>`...
pub fn as_service<C: std::borrow::Borrow<CacheService> + ?Sized>(c: &C) -> &CacheService {
    c.borrow()
}

/// Store every value.
pub fn always<T>(_: &T) -> bool {
    true
}

/// Store only `Some` values.
pub fn is_some<T>(value: &Option<T>) -> bool {
    value.is_some()
}

fn warn_uncached_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a #[cached]/#[invalidates] free function ran without a cache: call cachekit::set_global \
             at start-up or give the attribute `cache = ...`"
        );
    }
}

/// Cache-aside for a body returning `Result<T, E>`: only `Ok` values accepted by `store_if`
/// are stored. Without a service, runs the body.
pub async fn load_result<T, E, Fut>(
    cache: Option<&CacheService>,
    key: &str,
    ttl: Option<Duration>,
    store_if: fn(&T) -> bool,
    load: Fut,
) -> Result<Fetched<T>, E>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = Result<T, E>>,
{
    match cache {
        Some(cache) => cache.load_through(key, ttl, store_if, load).await,
        None => {
            warn_uncached_once();
            load.await.map(Fetched::loaded)
        }
    }
}

/// Cache-aside for a body returning a plain `T` (an `Option<T>` included).
pub async fn load_value<T, Fut>(
    cache: Option<&CacheService>,
    key: &str,
    ttl: Option<Duration>,
    store_if: fn(&T) -> bool,
    load: Fut,
) -> Fetched<T>
where
    T: Serialize + DeserializeOwned,
    Fut: Future<Output = T>,
{
    let load = async { Ok::<T, std::convert::Infallible>(load.await) };
    match load_result(cache, key, ttl, store_if, load).await {
        Ok(fetched) => fetched,
        Err(never) => match never {},
    }
}

/// Invalidation after a successful body. Each pattern arrives rendered, its placeholder values
/// glob-escaped: one with a glob left goes to `invalidate_pattern`, one without names a single
/// key and goes to `delete`.
pub async fn invalidate(cache: Option<&CacheService>, patterns: &[String]) {
    let Some(cache) = cache else {
        warn_uncached_once();
        return;
    };
    for pattern in patterns {
        if crate::key::has_glob(pattern) {
            cache.invalidate_pattern(pattern).await;
        } else {
            cache.delete(&crate::key::unescape_glob(pattern)).await;
        }
    }
}
