//! Runtime support for the code `#[cached]` and `#[invalidates]` generate. Not a public API:
//! it may change in any release.

use crate::{CacheService, Fetched};
use std::fmt::{self, Display, Write as _};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::fresh::Freshness;
pub use crate::key::{escape_glob, escape_part, hash_args};
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

/// A placeholder value of a `#[cached]` key, given as `format_args!("{}", value)`: writes it
/// escaped by [`escape_part`], without an intermediate `String`. Taking `Arguments` leaves the
/// `Display` requirement to `format_args!`, whose error for a value that is not `Display` is
/// the familiar one.
pub fn key_part(value: fmt::Arguments<'_>) -> impl Display + '_ {
    KeyPart(value)
}

struct KeyPart<'a>(fmt::Arguments<'a>);

impl Display for KeyPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaping(f).write_fmt(self.0)
    }
}

/// Writes through [`escape_part`]. Escaping is per character, so it does not matter how a
/// `Display` impl splits its output between calls.
struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(&escape_part(s))
    }
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
    local: bool,
    fresh: Freshness,
    store_if: fn(&T) -> bool,
    load: Fut,
) -> Result<Fetched<T>, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>>,
{
    match cache {
        Some(cache) => {
            cache
                .load_through(key, ttl, local, fresh, store_if, load)
                .await
        }
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
    local: bool,
    fresh: Freshness,
    store_if: fn(&T) -> bool,
    load: Fut,
) -> Fetched<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Fut: Future<Output = T>,
{
    let load = async { Ok::<T, std::convert::Infallible>(load.await) };
    match load_result(cache, key, ttl, local, fresh, store_if, load).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes its text in single characters, as a `Display` impl may.
    struct Piecewise(&'static str);

    impl Display for Piecewise {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.chars().try_for_each(|c| f.write_char(c))
        }
    }

    #[test]
    fn key_parts_are_written_escaped() {
        let part = |args: fmt::Arguments<'_>| key_part(args).to_string();
        assert_eq!(part(format_args!("{}", 42)), "42");
        assert_eq!(part(format_args!("{}", "a:b%c")), "a%3Ab%25c");
        assert_eq!(part(format_args!("{}", Piecewise("x:%y"))), "x%3A%25y");
        assert_eq!(
            part(format_args!("{}", "é:ü")),
            escape_part("é:ü").into_owned()
        );
    }
}
